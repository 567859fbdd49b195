"""Which runs predict: a cross-validation directory stands for its folds, in fold order."""

import pytest

from jaxpref import prediction
from jaxpref.config import ConfigError


def test_a_cross_validation_directory_stands_for_its_folds_in_order(tmp_path):
    cv = tmp_path / "cv"
    for fold in (0, 1, 10, 2):
        (cv / f"fold{fold}").mkdir(parents=True)
    (cv / "cv.json").write_text("{}")
    single = tmp_path / "run"
    single.mkdir()
    runs = prediction.expand_runs([str(cv), single])
    assert runs == [cv / "fold0", cv / "fold1", cv / "fold2", cv / "fold10", single]
    with pytest.raises(ConfigError, match="fold1: given twice"):
        prediction.expand_runs([cv, cv / "fold1"])
