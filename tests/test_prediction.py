"""Which runs predict (a cross-validation directory stands for its folds) and how a submission
is written."""

import os
import stat

import numpy as np
import pytest

from jaxpref import rundir
from jaxpref.config import ConfigError
from jaxpref.data import probabilities


def test_a_cross_validation_directory_stands_for_its_folds_in_order(tmp_path):
    cv = tmp_path / "cv"
    for fold in (0, 1, 10, 2):
        (cv / f"fold{fold}").mkdir(parents=True)
    (cv / "cv.json").write_text("{}")
    single = tmp_path / "run"
    single.mkdir()
    runs = rundir.expand_runs([str(cv), single])
    assert runs == [cv / "fold0", cv / "fold1", cv / "fold2", cv / "fold10", single]
    with pytest.raises(ConfigError, match="fold1: given twice"):
        rundir.expand_runs([cv, cv / "fold1"])


def test_a_submission_is_written_whole_and_readable_by_others(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = probabilities.write_submission(
            ["a", "b"], np.array([[2, 1, 1], [1, 1, 2]]), tmp_path / "s.csv"
        )
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text().splitlines() == [
        "id,winner_model_a,winner_model_b,winner_tie", "a,0.5,0.25,0.25", "b,0.25,0.25,0.5"
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]
