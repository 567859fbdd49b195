"""The public API: docs/api.md's notebook session runs as written (on the tiny preset) and its
numbers agree; `import jaxpref` stays light; bad input fails before any framework loads."""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

import jaxpref
from jaxpref.config import ConfigError
from jaxpref.data import arena
from jaxpref.scoring import metrics

PAGE = REPO / "docs" / "api.md"
SETTINGS = dict(epochs=1, batch_size=8, sequence_length=64, learning_rate=3e-3)


def code_blocks(page) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(arena.LABEL_COLUMNS)].to_numpy()


@pytest.fixture(scope="module")
def session(tiny_preset, small_csv, tmp_path_factory) -> Iterator[dict]:
    """The page's blocks in order in this process; the first block's settings swapped for the
    tiny preset, the small CSV and one short epoch."""
    import keras

    first, *rest = code_blocks(PAGE)
    names: dict = {}
    exec(first, names)
    assert {"PRESET", "TRAIN_CSV", "TEST_CSV", "WORK_DIR", "SETTINGS"} <= set(names)
    work = tmp_path_factory.mktemp("api")
    names.update(
        PRESET=str(tiny_preset), TRAIN_CSV=str(small_csv), TEST_CSV=str(small_csv),
        WORK_DIR=str(work), SETTINGS=SETTINGS,
    )  # fmt: skip
    try:
        for block in rest:
            exec(block, names)
        yield names
    finally:
        keras.distribution.set_distribution(None)
        keras.backend.clear_session()


@pytest.mark.slow
def test_the_notebook_session_of_the_page_runs_and_its_numbers_agree(session):
    """The run is where asked and says what summary.json says; predictions sum to 1, equal the
    run's calibrated validation predictions, the bundle's and evaluate's log loss."""
    run, test = session["run"], session["test"]
    assert run.path == (Path(session["WORK_DIR"]) / "deberta").resolve()
    assert dict(run.summary) == json.loads((run.path / "summary.json").read_text())
    assert run.best_epoch == 1 and np.isfinite(run.best_val_log_loss)

    predictions = session["predictions"]
    assert predictions.columns.tolist() == ["id", *arena.LABEL_COLUMNS]
    assert predictions["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(probabilities(predictions).sum(axis=1), 1, atol=1e-9)
    written = pd.read_csv(session["WORK_DIR"] + "/submission.csv", dtype={"id": str})
    np.testing.assert_allclose(probabilities(written), probabilities(predictions), atol=1e-12)

    # Calibrated as training calibrated its validation predictions (what infer writes).
    valid = pd.read_csv(run.path / "valid_predictions.csv", dtype={"id": str}).set_index("id")
    ours = predictions.set_index("id").loc[valid.index]
    np.testing.assert_allclose(ours.to_numpy(), valid.to_numpy(), atol=1e-5)

    # evaluate's model log loss is that of these predictions on the validation labels.
    labels = arena.read_arena_csv(session["TRAIN_CSV"], labelled=True).set_index("id")["label"]
    model = session["report"]["scores"][metrics.MODEL]
    expected = metrics.log_loss(ours.to_numpy(), labels.loc[valid.index].to_numpy())
    assert model["log_loss"] == pytest.approx(expected, abs=1e-5)
    assert model["log_loss"] == pytest.approx(run.calibrated_val_log_loss, abs=1e-6)

    served = session["served_predictions"]
    assert served["id"].tolist() == predictions["id"].tolist()
    np.testing.assert_allclose(probabilities(served), probabilities(predictions), atol=1e-5)

    pairs = session["pairs"]
    assert pairs["id"].tolist() == ["0", "1"]
    np.testing.assert_allclose(probabilities(pairs).sum(axis=1), 1, atol=1e-9)


@pytest.mark.slow
def test_predict_pairs_of_plain_strings_equals_predict_of_the_same_rows(session):
    """Also: the first predictor still tokenizes after the bundle's model was loaded beside it."""
    test, predictions = session["test"], session["predictions"]
    one_turn = test.index[test["prompt"].map(len) == 1][:2]
    row_texts = [[test.loc[i, name][0] for i in one_turn] for name in arena.TEXT_COLUMNS]
    again = session["predictor"].predict_pairs(*row_texts)
    np.testing.assert_allclose(
        probabilities(again), probabilities(predictions.loc[one_turn]), atol=1e-6
    )


def test_import_jaxpref_loads_no_framework():
    script = (
        "import sys, jaxpref\n"
        "names = (jaxpref.TrainConfig, jaxpref.train, jaxpref.load, jaxpref.read_arena_csv)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'jax', 'tensorflow'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_public_names_are_listed_and_nothing_else_is_reached():
    assert sorted(jaxpref.__all__) == sorted(
        ["Predictor", "TrainConfig", "TrainedRun", "evaluate", "export", "load",
         "read_arena_csv", "read_preferences", "read_rows", "train"]
    )  # fmt: skip
    assert set(jaxpref.__all__) <= set(dir(jaxpref))
    assert all(getattr(jaxpref, name) is getattr(jaxpref.api, name) for name in jaxpref.__all__)
    assert jaxpref.read_preferences is jaxpref.data.preferences.read_chosen_rejected
    with pytest.raises(AttributeError, match="no attribute 'trainer'"):
        jaxpref.trainer  # noqa: B018


@pytest.mark.parametrize(
    "pairs, message",
    [
        ((["p"], ["a", "b"], ["c"]), "lengths differ: prompt 1, response_a 2, response_b 1"),
        (("p", ["a"], "b"), "column 'prompt': str: pass three strings, or three lists"),
        ((["p", "q"], ["a", 3], ["b", "c"]), "index 1 (id 1), column 'response_a': int"),
        ((["p"], [["a", 2]], ["b"]), "column 'response_a': turn 1 is int"),
    ],
)
def test_bad_pairs_name_the_entry_and_column(pairs, message):
    with pytest.raises(arena.DataError, match=re.escape(message)):
        arena.pairs_frame(*pairs, "predict_pairs")


def test_a_frame_of_plain_strings_is_refused_with_its_row_and_column():
    frame = pd.DataFrame(
        {"id": ["x"], "prompt": ["Hi"], "response_a": [["a"]], "response_b": [["b"]]}
    )
    with pytest.raises(arena.DataError, match=r"the frame, index 0 \(id x\), column 'prompt': str"):
        jaxpref.Predictor(None, None).predict(frame)


def test_settings_that_differ_from_the_saved_run_are_refused_on_resume(tmp_path):
    saved = jaxpref.TrainConfig().replace(run_dir=str(tmp_path), epochs=3, learning_rate=3e-3)
    saved.to_json(tmp_path / "config.json")
    with pytest.raises(ConfigError, match=r"--epochs 4 \(saved: 3\)"):
        jaxpref.train(saved.replace(epochs=4), resume=True)
    with pytest.raises(ConfigError, match="pass both, or neither"):
        jaxpref.train(saved, train_frame=pd.DataFrame())
