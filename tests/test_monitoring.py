"""Watching long work: progress lines outside a terminal, W&B scalars."""

import os
import re
import sys
import types

import numpy as np
import pytest
from conftest import run_script

from jaxpref import monitoring
from jaxpref.config import RunConfig
from jaxpref.data import text
from jaxpref.inputs import packers
from jaxpref.inputs.featurize import tokenize
from jaxpref.models import backbones
from jaxpref.serve import predict

LINE = re.compile(r"(\w+): (\d+)/(\d+) rows \((\d+)%\), [\d.]+ rows/s, ETA \d+:\d\d:\d\d")


def progress_lines(caplog) -> list[tuple[str, ...]]:
    return [m for message in caplog.messages for m in LINE.findall(message)]


@pytest.fixture
def every_call(caplog):
    """A progress line whenever one is due (interval 0); returns the lines logged so far."""
    monitoring.setup_logging(log_every=0.0)
    yield lambda: progress_lines(caplog)
    monitoring.setup_logging(log_every=RunConfig.log_every)


def test_ticker_reports_counts_rate_and_eta_but_not_the_finished_total(every_call):
    ticker = monitoring.Ticker("reading", 10)
    for _ in range(4):
        ticker.add(3)  # 3, 6, 9, then 12 >= 10: done, no line
    assert [(done, percent) for _, done, _, percent in every_call()] == [
        ("3", "30"), ("6", "60"), ("9", "90")
    ]  # fmt: skip


def test_lines_are_spaced_by_log_every(caplog):
    monitoring.setup_logging(log_every=3600.0)
    try:
        ticker = monitoring.Ticker("reading", 10)
        for _ in range(9):
            ticker.add(1)
        assert not progress_lines(caplog)
    finally:
        monitoring.setup_logging(log_every=RunConfig.log_every)


def test_tokenizing_a_large_file_reports_progress(tiny_preset, every_call):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 32)
    packer = packers.PairPacker(preprocessor, ("token_ids", "padding_mask"))
    n = 3 * packers.TOKENIZE_CHUNK
    texts = {key: np.asarray([f"{key} {i}" for i in range(n)], object) for key in text.FEATURE_KEYS}
    tokens = tokenize(texts, packer)
    assert len(tokens) == n
    lines = every_call()
    assert [(label, int(done)) for label, done, *_ in lines] == [
        ("tokenizing", packers.TOKENIZE_CHUNK),
        ("tokenizing", 2 * packers.TOKENIZE_CHUNK),
    ]


def test_prediction_progress_counts_real_rows_per_batch(every_call):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    sizes = [4, 4, 1]  # the last global batch holds one real row and three filler copies
    watch = predict.predict_progress("predicting", sizes)
    model.predict(np.zeros((12, 2)), batch_size=4, verbose=0, callbacks=[watch])
    assert [(label, int(done), int(total)) for label, done, total, _ in every_call()] == [
        ("predicting", 4, 9),
        ("predicting", 8, 9),
    ]


def test_wandb_run_gets_the_scalars_and_a_resumed_run_continues_it(tmp_path, monkeypatch):
    """Against a stand-in `wandb` module recording calls (wandb is an optional extra; the
    same calls were checked against wandb 0.31 in offline mode)."""
    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step, scalars))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=lambda **kwargs: calls.append(("init", kwargs)) or Run()
    ))  # fmt: skip
    directory = tmp_path / "run" / "wandb"
    for step in (5, 9):  # a run, then the same run resumed
        with monitoring.scalar_writers(None, "arena", directory, {"seed": 1}) as writers:
            for writer in writers:
                writer.write(step, {"train/loss": np.float32(0.5)})
    inits = [call[1] for call in calls if call[0] == "init"]
    assert inits[0] == inits[1] and inits[0]["project"] == "arena"
    assert inits[0]["resume"] == "allow" and inits[0]["config"] == {"seed": 1}
    assert inits[0]["id"] == (directory / "run-id").read_text().strip()
    logged = [call for call in calls if call[0] != "init"]
    assert logged == [("log", 5, {"train/loss": 0.5}), ("finish",)] + [
        ("log", 9, {"train/loss": 0.5}), ("finish",)
    ]  # fmt: skip


def test_wandb_without_the_package_is_one_line_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "blocked" / "wandb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    ))  # fmt: skip
    run_dir = tmp_path / "run"
    result = run_script("train_jax.py", "--devices", "cpu", "--run-dir", str(run_dir),
                        "--wandb", "arena")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --wandb needs the wandb package: pip install 'jaxpref[wandb]' (or pip install "
        "wandb)"
    )
    assert not run_dir.exists()
