import json

import numpy as np
import pytest

from jaxpref import calibration, metrics


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


@pytest.mark.parametrize("seed", range(5))
def test_fitted_temperature_never_makes_the_fitted_loss_worse(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=50)
    labels = rng.integers(0, 3, 50)
    temperature = calibration.fit_temperature(probs, labels)
    after = metrics.log_loss(calibration.apply_temperature(probs, temperature), labels)
    assert after <= metrics.log_loss(probs, labels) + 1e-12


def test_saved_temperature_round_trips_and_defaults_to_one(tmp_path):
    path = tmp_path / "calibration.json"
    assert calibration.load_temperature(path) == 1.0
    calibration.save(path, calibration.Calibration(1.7, 1.10, 1.05))
    assert calibration.load_temperature(path) == 1.7
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["val_log_loss_before"] == 1.10 and saved["val_log_loss_after"] == 1.05
