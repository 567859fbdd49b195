"""Every decoder family end to end on a 2 x 2 (batch x model) mesh of 4 simulated CPU devices:
training lowers the validation loss on learnable rows, infer.py predicts the same from the run
directory and from its exported bundle, a resumed run ends where an uninterrupted one ends,
and 2 processes x 2 devices train what 1 process x 4 devices trains."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_processes, run_script, write_learnable_csv

from jaxpref.families import FAMILIES

pytestmark = pytest.mark.slow

RESUMED = ("gemma2", "qwen2")  # resume checked on two families, tied and untied embeddings
TOLERANCE = 1e-5


def train_args(preset, csv_path, run_dir, num_devices: int = 4) -> list[str]:
    """A 2-epoch LoRA cross-encoder run with its weights split over a model axis of 2."""
    return [
        "--devices", "cpu", "--num-devices", str(num_devices), "--preset", str(preset),
        "--run-dir", str(run_dir), "--train-csv", str(csv_path), "--architecture", "cross",
        "--model-parallel", "2", "--batch-size", "8", "--sequence-length", "64",
        "--epochs", "2", "--learning-rate", "3e-3", "--lora-rank", "4", "--valid-fraction", "0.2",
    ]  # fmt: skip


def checked(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def submission(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str}).set_index("id").sort_index()


def infer(source, test_csv, out) -> pd.DataFrame:
    """infer.py's predictions for `test_csv` from a run directory or a bundle, on 4 devices."""
    checked(run_script("infer.py", "--devices", "cpu", "--num-devices", "4", "--run-dir",
                       str(source), "--test-csv", str(test_csv), "--output", str(out)))  # fmt: skip
    return submission(out)


@pytest.fixture(scope="module")
def learnable_csv(tmp_path_factory):
    return write_learnable_csv(tmp_path_factory.mktemp("llm_data") / "learnable.csv", rows=240)


@pytest.fixture(scope="module")
def trained(decoder_presets, learnable_csv, tmp_path_factory):
    """The 1-process run of a family, trained once per module when first asked for."""
    runs = {}

    def get(name: str):
        if name not in runs:
            run_dir = tmp_path_factory.mktemp(f"llm_{name}") / "run"
            checked(run_script("train_jax.py", *train_args(decoder_presets[name], learnable_csv,
                                                          run_dir)))  # fmt: skip
            runs[name] = run_dir
        return runs[name]

    return get


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_learns_and_its_bundle_predicts_as_the_run(trained, learnable_csv, name, tmp_path):
    run_dir = trained(name)
    history = pd.read_csv(run_dir / "history.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"{name}: val log loss {history['val_log_loss'].round(4).tolist()}, "
          f"prior {summary['prior_val_log_loss']:.4f}")  # fmt: skip
    # Two epochs of a random one-block model: below the class prior (Llama-3, Mistral...) or
    # at least below the first epoch (Gemma stays above the prior).
    val = history["val_log_loss"]
    assert val.min() < summary["prior_val_log_loss"] or val.iloc[-1] < val.iloc[0], history

    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    raw = pd.read_csv(learnable_csv, dtype=str)
    valid_csv = tmp_path / "valid.csv"
    raw[raw["id"].isin(split.loc[split["split"] == "valid", "id"])].to_csv(valid_csv, index=False)
    during = submission(run_dir / "valid_predictions.csv")
    from_run = infer(run_dir, valid_csv, tmp_path / "run.csv")
    np.testing.assert_allclose(from_run.loc[during.index], during, atol=TOLERANCE)

    bundle = tmp_path / "bundle"
    checked(run_script("export.py", "--devices", "cpu", "--run-dir", str(run_dir), "--out",
                       str(bundle)))  # fmt: skip
    from_bundle = infer(bundle, valid_csv, tmp_path / "bundle.csv")
    np.testing.assert_allclose(from_bundle, from_run, atol=TOLERANCE)


@pytest.mark.parametrize("name", RESUMED)
def test_run_resumed_after_its_first_epoch_ends_as_the_uninterrupted_one(trained, name, tmp_path):
    """The state a run killed after epoch 1 leaves (its epoch-2 state removed; history.csv and
    the best checkpoint of epoch 2 left for resuming to forget) resumes to the same result."""
    uninterrupted = trained(name)
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    state = run_dir / "checkpoints" / "state"
    steps = sorted(int(p.name) for p in state.iterdir() if p.name.isdigit())
    assert len(steps) == 2 and steps[1] == 2 * steps[0]  # one state per epoch end
    shutil.rmtree(state / str(steps[1]))
    resumed = checked(run_script("train_jax.py", "--devices", "cpu", "--num-devices", "4",
                                 "--resume", "--run-dir", str(run_dir)))  # fmt: skip
    assert "resuming at epoch 2, step 0" in resumed.stderr
    a, b = (pd.read_csv(d / "history.csv") for d in (uninterrupted, run_dir))
    assert a["epoch"].tolist() == b["epoch"].tolist() == [1, 2]
    np.testing.assert_allclose(b["val_log_loss"], a["val_log_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        submission(run_dir / "valid_predictions.csv"),
        submission(uninterrupted / "valid_predictions.csv"),
        atol=TOLERANCE,
    )
    assert max(int(p.name) for p in state.iterdir() if p.name.isdigit()) == steps[1]


def test_two_processes_train_what_one_process_trains(
    trained, decoder_presets, learnable_csv, tmp_path
):
    """2 processes x 2 devices, each process one row of the 2 x 2 mesh (gloo on 127.0.0.1)."""
    run_dir = tmp_path / "run"
    args = train_args(decoder_presets["llama3"], learnable_csv, run_dir, num_devices=2)
    codes = run_processes("train_jax.py", args, 2, tmp_path)
    assert codes == [0, 0], (tmp_path / "train_jax.py.1.log").read_text()[-3000:]
    single = trained("llama3")
    a, b = (pd.read_csv(d / "history.csv") for d in (single, run_dir))
    np.testing.assert_allclose(b["val_log_loss"], a["val_log_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        submission(run_dir / "valid_predictions.csv"),
        submission(single / "valid_predictions.csv"),
        atol=TOLERANCE,
    )
