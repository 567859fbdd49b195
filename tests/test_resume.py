"""Preemption: kill -9 or SIGTERM mid-run, --resume, and end where an uninterrupted run ends."""

import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest
from conftest import built_once, start_python, start_script, tiny_run_args

from jaxpref.rundir import RunDir
from jaxpref.training import checkpoints


def latest(run_dir):
    return checkpoints.latest_state(RunDir(run_dir).state_checkpoints)


pytestmark = pytest.mark.slow


def _args(tiny_preset, small_csv, run_dir):
    return [*tiny_run_args(tiny_preset, small_csv, run_dir), "--save-every", "3"]


# Runs train_jax.py (argv[3:]) and pauses it for good once the state of global step argv[1]
# is saved, after writing the file argv[2]: the test then kills it, or sends SIGTERM, which
# ends the pause (the run saves its state at the next step and stops). However loaded the
# machine, the run is interrupted at the same step.
PAUSED_TRAINING = """
import os, signal, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the CLI sets it before TensorFlow loads
from pathlib import Path
from jaxpref.training import checkpoints
pause_at, marker = int(sys.argv.pop(1)), Path(sys.argv.pop(1))
batch_end = checkpoints.StateCheckpoint.on_train_batch_end
def paused(self, batch, logs=None):
    batch_end(self, batch, logs)
    if self.step == pause_at and not marker.exists():
        handler, terminated = signal.getsignal(signal.SIGTERM), []
        def on_sigterm(signum, frame):
            terminated.append(signum)
            handler(signum, frame)
        signal.signal(signal.SIGTERM, on_sigterm)
        marker.write_text(str(pause_at))
        while not terminated:
            time.sleep(0.05)
        signal.signal(signal.SIGTERM, handler)
checkpoints.StateCheckpoint.on_train_batch_end = paused
from jaxpref.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _start_paused(args, pause_at: int, tmp_path):
    """The run of `args`, paused after saving the state of step `pause_at` (PAUSED_TRAINING);
    returns once it is paused."""
    marker = tmp_path / "paused"
    log = tmp_path / "train.log"
    proc = start_python("-c", PAUSED_TRAINING, str(pause_at), str(marker), *args, log=log)
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    return proc


def _resume(run_dir, tmp_path, devices: int = 2):
    """Resume the run on `devices` devices (on the 2 it trained on, its programs are already
    compiled by the run it continues: a process that reads them from the tests' persistent
    compilation cache); its output."""
    log = tmp_path / "resume.log"
    proc = start_script("train_jax.py", "--devices", "cpu", "--num-devices", str(devices),
                        "--resume", "--run-dir", str(run_dir), log=log)  # fmt: skip
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    lines = log.read_text().splitlines()
    foreign = [line for line in lines if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert not foreign, foreign  # cache hits, like the rest, print nothing of their own
    return log.read_text()


def _same_result(a, b, epochs=(1, 2), last_step=54):
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert ha["epoch"].tolist() == hb["epoch"].tolist() == list(epochs)
    np.testing.assert_allclose(ha["val_log_loss"], hb["val_log_loss"], rtol=1e-5)
    files = [f"validation/epoch-{e:g}.csv" for e in epochs]
    for name in ("valid_predictions.csv", *files):
        pa, pb = (pd.read_csv(d / name).set_index("id") for d in (a, b))
        np.testing.assert_allclose(pa.to_numpy(), pb.loc[pa.index].to_numpy(), atol=1e-5)
    final = [(d / "checkpoints" / "state").iterdir() for d in (a, b)]
    assert max(int(p.name) for p in final[0] if p.name.isdigit()) == last_step
    assert max(int(p.name) for p in final[1] if p.name.isdigit()) == last_step


@pytest.fixture(scope="session")
def uninterrupted(tiny_preset, small_csv, tmp_path_factory):
    """The run the interrupted ones must end as, trained once (copy it to change it)."""

    def build(root):
        log = root / "train.log"
        proc = start_script("train_jax.py", *_args(tiny_preset, small_csv, root / "run"), log=log)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    return built_once(tmp_path_factory, "uninterrupted", build) / "run"


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(
    uninterrupted, tiny_preset, small_csv, tmp_path
):
    """Killed on 2 devices, resumed on 1 (in a process without the second one)."""
    run_dir = tmp_path / "run"
    proc = _start_paused(_args(tiny_preset, small_csv, run_dir), 6, tmp_path)
    proc.kill()
    proc.wait()
    meta = latest(run_dir)
    assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (6, 0, 6)
    out = _resume(run_dir, tmp_path, devices=1)
    assert "resuming at epoch 1, step 6" in out
    _same_result(uninterrupted, run_dir)


def test_sigterm_saves_exits_143_and_resumes(uninterrupted, tiny_preset, small_csv, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_paused(_args(tiny_preset, small_csv, run_dir), 6, tmp_path)
    proc.send_signal(signal.SIGTERM)
    log = (tmp_path / "train.log").read_text
    assert proc.wait(timeout=120) == 143, log()[-3000:]
    assert "jaxpref train --resume --run-dir" in log()
    assert latest(run_dir)["global_step"] == 7  # the step after the pause, saved on SIGTERM
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


def test_resuming_on_devices_the_batch_does_not_split_over_is_refused_before_any_work(
    uninterrupted, tmp_path, monkeypatch
):
    """One line naming both device counts, raised before the distribution is set."""
    import keras

    import jaxpref
    from jaxpref.rundir import ResumeError

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # jaxpref.train sets it
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    config = jaxpref.TrainConfig().replace(run_dir=str(run_dir), devices="cpu", num_devices=3)
    before = keras.distribution.distribution()
    with pytest.raises(ResumeError) as refused:
        jaxpref.train(config, resume=True)
    assert keras.distribution.distribution() is before
    assert str(refused.value) == (
        "--resume on 3 devices: the run's state was saved on 2, and its --batch-size 8 does not "
        "split over 3; resume on 1, 2, 4 or 8 devices (--num-devices)"
    )


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
        args = [*_args(tiny_preset, small_csv, run_dir), *flags]
        if name == "killed":
            proc = _start_paused(args, 15, tmp_path)  # inside epoch 1's third period
        else:
            proc = start_script("train_jax.py", *args, log=log)
        if name == "killed":
            proc.kill()
            proc.wait()
            meta = latest(run_dir)  # saves at 3, 6, 7 (period), 9, 12, 14 (period), 15
            assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (15, 2, 1)
            resumed = _resume(run_dir, tmp_path)
            assert "resuming at epoch 1 part 3/4, step 1" in resumed, resumed
        else:
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
            assert "epoch 0.75: accuracy=" in log.read_text()
        runs[name] = run_dir
    _same_result(runs["uninterrupted"], runs["killed"], [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2])
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    history = pd.read_csv(runs["killed"] / "history.csv")
    assert summary["best_epoch"] == history["epoch"][history["val_log_loss"].idxmin()]


def test_gradient_accumulation_trains_and_resumes_between_accumulated_steps(
    tiny_preset, small_csv, tmp_path
):
    """--grad-accum 2 over one epoch of 27 steps (13 updates of 16 rows; step 27 completes
    none, and the log says so). Killed after the state of step 9 is saved, which holds step 9's
    gradient accumulated but not yet applied, the resumed run ends as an uninterrupted one."""
    flags = ["--grad-accum", "2", "--epochs", "1"]
    args = {name: [*_args(tiny_preset, small_csv, tmp_path / name), *flags]
            for name in ("uninterrupted", "killed")}  # fmt: skip
    log = tmp_path / "uninterrupted.log"
    assert start_script("train_jax.py", *args["uninterrupted"], log=log).wait(timeout=600) == 0
    text = log.read_text()
    assert "global batch 16 (2 x 8 accumulated)" in text, text[-3000:]
    assert "--grad-accum 2: the last 1 of the run's 27 steps complete no update" in text
    config = json.loads((tmp_path / "uninterrupted" / "config.json").read_text())["optim"]
    assert (config["batch_size"], config["grad_accum"], config["global_batch"]) == (8, 2, 16)
    proc = _start_paused(args["killed"], 9, tmp_path)
    proc.kill()
    proc.wait()
    meta = latest(tmp_path / "killed")
    assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (9, 0, 9)
    assert "resuming at epoch 1, step 9" in _resume(tmp_path / "killed", tmp_path)
    _same_result(tmp_path / "uninterrupted", tmp_path / "killed", epochs=[1], last_step=27)
