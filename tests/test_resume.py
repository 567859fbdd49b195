"""Preemption: kill -9 or SIGTERM mid-run, --resume, and end where an uninterrupted run ends."""

import json
import re
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest
from conftest import start_script, tiny_run_args

from jaxpref import checkpoints
from jaxpref.rundir import RunDir


def latest(run_dir):
    return checkpoints.latest_state(RunDir(run_dir).state_checkpoints)


pytestmark = pytest.mark.slow


def _args(tiny_preset, small_csv, run_dir):
    return [*tiny_run_args(tiny_preset, small_csv, run_dir), "--save-every", "3"]


def _wait_for_state(run_dir, min_step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            meta = latest(run_dir) if (run_dir / "checkpoints").exists() else None
        except FileNotFoundError:  # the run deleted an old step while Orbax listed them
            meta = None
        if meta and meta["global_step"] >= min_step:
            return meta
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError("no state checkpoint appeared")


def _resume(run_dir, tmp_path):
    log = tmp_path / "resume.log"
    proc = start_script("train_jax.py", "--devices", "cpu", "--num-devices", "2", "--resume",
                        "--run-dir", str(run_dir), log=log)  # fmt: skip
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def _same_result(a, b, epochs=(1, 2)):
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert ha["epoch"].tolist() == hb["epoch"].tolist() == list(epochs)
    np.testing.assert_allclose(ha["val_log_loss"], hb["val_log_loss"], rtol=1e-5)
    files = [f"validation/epoch-{e:g}.csv" for e in epochs]
    for name in ("valid_predictions.csv", *files):
        pa, pb = (pd.read_csv(d / name).set_index("id") for d in (a, b))
        np.testing.assert_allclose(pa.to_numpy(), pb.loc[pa.index].to_numpy(), atol=1e-5)
    final = [(d / "checkpoints" / "state").iterdir() for d in (a, b)]
    assert max(int(p.name) for p in final[0] if p.name.isdigit()) == 54
    assert max(int(p.name) for p in final[1] if p.name.isdigit()) == 54


@pytest.fixture(scope="module")
def uninterrupted(tiny_preset, small_csv, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    log = run_dir.parent / "train.log"
    proc = start_script("train_jax.py", *_args(tiny_preset, small_csv, run_dir), log=log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return run_dir


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(
    uninterrupted, tiny_preset, small_csv, tmp_path
):
    run_dir = tmp_path / "run"
    proc = start_script("train_jax.py", *_args(tiny_preset, small_csv, run_dir),
                        log=tmp_path / "train.log")  # fmt: skip
    meta = _wait_for_state(run_dir, 6, proc)
    proc.kill()
    proc.wait()
    assert meta["epoch"] == 0 and meta["step_in_epoch"] >= 6  # stopped inside epoch 1
    out = _resume(run_dir, tmp_path)
    assert "resuming at epoch 1, step" in out
    _same_result(uninterrupted, run_dir)


def test_sigterm_saves_exits_143_and_resumes(uninterrupted, tiny_preset, small_csv, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = start_script("train_jax.py", *_args(tiny_preset, small_csv, run_dir), log=log)
    _wait_for_state(run_dir, 6, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    assert "train_jax.py --resume --run-dir" in log.read_text()
    saved = latest(run_dir)
    assert saved["global_step"] >= 6
    _resume(run_dir, tmp_path)
    _same_result(uninterrupted, run_dir)


def test_unfinished_save_is_ignored_and_the_previous_checkpoint_resumes(uninterrupted, tmp_path):
    """What a kill during a save leaves behind: Orbax's temporary directory, never committed."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    state = RunDir(run_dir).state_checkpoints
    shutil.rmtree(state / "54")  # back to the mid-epoch checkpoint of epoch 2
    meta = latest(run_dir)
    partial = state / "57.orbax-checkpoint-tmp-1795970000000"
    shutil.copytree(state / str(meta["global_step"]), partial)
    for marker in partial.rglob("commit_success.txt"):
        marker.unlink()
    for data_file in (partial / "pytree").rglob("*"):
        if data_file.is_file():
            data_file.write_bytes(data_file.read_bytes()[:10])  # torn write
    assert latest(run_dir)["global_step"] == meta["global_step"]
    # history.csv keeps epoch 2's row and checkpoints/best may hold epoch 2: resuming must
    # forget both itself before replaying the epoch.
    _resume(run_dir, tmp_path)
    _same_result(uninterrupted, run_dir)


def test_fresh_run_refuses_to_overwrite_and_resume_needs_a_state(
    uninterrupted, tiny_preset, small_csv, tmp_path
):
    from conftest import run_script

    again = run_script("train_jax.py", *_args(tiny_preset, small_csv, uninterrupted))
    assert again.returncode == 2 and "pass --resume" in again.stderr
    nothing = run_script("train_jax.py", "--devices", "cpu", "--resume", "--run-dir",
                         str(tmp_path / "none"))  # fmt: skip
    assert nothing.returncode == 2 and "--resume needs --run-dir" in nothing.stderr


def test_validating_four_times_per_epoch_resumes_mid_period(tiny_preset, small_csv, tmp_path):
    """27 steps per epoch cut into periods of 7, 7, 6 and 7 steps, each validated and
    checkpointed; killed inside epoch 1's third period, the resumed run ends as an
    uninterrupted one does."""
    flags = ["--validations-per-epoch", "4"]
    runs = {}
    for name in ("uninterrupted", "killed"):
        run_dir = tmp_path / name
        log = tmp_path / f"{name}.log"
        proc = start_script(
            "train_jax.py", *_args(tiny_preset, small_csv, run_dir), *flags, log=log
        )
        if name == "killed":
            meta = _wait_for_state(run_dir, 15, proc)  # saves at 15, 18 (every 3), 20 (period)
            proc.kill()
            proc.wait()
            assert meta["global_step"] < 27, meta  # inside epoch 1
            resumed = _resume(run_dir, tmp_path)
            # later saves may land before the kill: any point, named by epoch and part
            assert re.search(r"resuming at epoch [12] part [1-4]/4, step \d", resumed), resumed
        else:
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
            assert "epoch 0.75: accuracy=" in log.read_text()
        runs[name] = run_dir
    _same_result(runs["uninterrupted"], runs["killed"], [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2])
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    history = pd.read_csv(runs["killed"] / "history.csv")
    assert summary["best_epoch"] == history["epoch"][history["val_log_loss"].idxmin()]
