"""Markdown tables and PNG plots of scores."""

import struct

import numpy as np
import pandas as pd
import pytest

from jaxpref.scoring import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_reliability_diagram_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, size=200)
    path = report.reliability_diagram(probs, labels, tmp_path / "plots" / "reliability.png")
    assert png_size(path) == (500, 600)
    assert path.stat().st_size > 10_000


def test_learning_curves_is_a_png(tmp_path):
    history = write_history(tmp_path / "history.csv")
    path = report.learning_curves(history, tmp_path / "curves.png")
    assert png_size(path) == (1000, 400)
    assert path.stat().st_size > 10_000


def test_learning_curves_need_epochs(tmp_path):
    empty = tmp_path / "history.csv"
    empty.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="no epochs"):
        report.learning_curves(empty, tmp_path / "curves.png")


def write_history(path):
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "accuracy": [0.40, 0.50, 0.55],
            "log_loss": [1.09, 1.02, 0.98],
            "loss": [1.10, 1.03, 0.99],
            "val_accuracy": [0.38, 0.45, 0.44],
            "val_log_loss": [1.08, 1.05, 1.06],
            "val_loss": [1.09, 1.06, 1.07],
        }
    ).to_csv(path, index=False)
    return path
