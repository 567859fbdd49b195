import json

import numpy as np
import pytest

from jaxpref.scoring import calibration, metrics


def _overconfident(n=600, seed=0):
    """Right 50% of the time but always 90% sure: a temperature above 1 helps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.5, labels, rng.integers(0, 3, n))
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), guess] = 0.9
    return probs, labels


def test_temperature_one_changes_nothing():
    probs, _ = _overconfident()
    np.testing.assert_allclose(calibration.apply_temperature(probs, 1.0), probs, atol=1e-12)


def test_overconfident_predictions_get_softened_and_loss_drops():
    probs, labels = _overconfident()
    temperature = calibration.fit_temperature(probs, labels)
    assert temperature > 1.5
    before = metrics.log_loss(probs, labels)
    after = metrics.log_loss(calibration.apply_temperature(probs, temperature), labels)
    assert after < before - 0.1
    ranks = calibration.apply_temperature(probs, temperature).argmax(1)
    assert (ranks == probs.argmax(1)).all()  # accuracy is untouched


def miscalibrated(temperature: float, n: int, seed: int = 0):
    """Labels drawn from known probabilities, reported as softmax(log p * temperature): too sure
    for a temperature above 1, too timid below. Temperature scaling by `temperature` undoes it."""
    rng = np.random.default_rng(seed)
    true = rng.dirichlet(np.full(3, 2.0), size=n)
    labels = (rng.random(n)[:, None] > true.cumsum(axis=1)).sum(axis=1)
    return calibration.apply_temperature(true, 1 / temperature), labels


@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_a_known_miscalibration_is_recovered(temperature):
    probs, labels = miscalibrated(temperature, 5000)
    assert calibration.fit_temperature(probs, labels) == pytest.approx(temperature, rel=0.05)


def brute_force(probs, labels, points: int = 1201) -> tuple[float, float]:
    """(T, loss) of the least log loss over a dense log-spaced grid of the same range."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), points))
    losses = [metrics.log_loss(calibration.apply_temperature(probs, t), labels) for t in grid]
    best = int(np.argmin(losses))
    return float(grid[best]), losses[best]


CASES = [("random", seed) for seed in range(4)] + [("timid", 0), ("overconfident", 1)]


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_fitted_temperature_is_the_least_loss_temperature(kind, seed):
    if kind == "random":  # uncalibrated scores of 50 rows: the optimum can be anywhere
        rng = np.random.default_rng(seed)
        probs, labels = rng.dirichlet(np.ones(3), size=50), rng.integers(0, 3, 50)
    else:
        probs, labels = miscalibrated(0.4 if kind == "timid" else 2.5, 1000, seed)
    fitted = calibration.fit_temperature(probs, labels)
    loss = metrics.log_loss(calibration.apply_temperature(probs, fitted), labels)
    best_t, best_loss = brute_force(probs, labels)
    assert loss <= best_loss + 1e-12  # no grid point beats it
    step = np.log(20.0 / 0.05) / 1200
    assert abs(np.log(fitted) - np.log(best_t)) <= step  # and it sits at the grid's optimum


def test_saved_temperature_round_trips_and_defaults_to_one(tmp_path):
    path = tmp_path / "calibration.json"
    assert calibration.load_temperature(path) == 1.0
    calibration.save(path, calibration.Calibration(1.7, 1.10, 1.05))
    assert calibration.load_temperature(path) == 1.7
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["val_log_loss_before"] == 1.10 and saved["val_log_loss_after"] == 1.05
