"""Faults of long runs: NaN, failed saves, two writers, unwritable places, one-class data."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO, run_script, script_environment, start_script, tiny_run_args

from jaxpref.data import arena
from jaxpref.rundir import RunDir
from jaxpref.training import checkpoints

# Runs train_jax.py with Orbax's save failing like a full disk from the second save on, after
# leaving a half-written temporary directory behind (what a crash during a write leaves).
FAILING_SAVES = """
import errno, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the CLI sets it before TensorFlow loads
from pathlib import Path
import orbax.checkpoint as oc
save = oc.v1.training.Checkpointer.save_checkpointables
calls = []
def failing(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) > 1:
        partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1"
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "half").write_bytes(b"\\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)
oc.v1.training.Checkpointer.save_checkpointables = failing
from jaxpref.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_failed_save_ends_in_one_line_and_the_earlier_checkpoint_resumes(
    tiny_preset, small_csv, tmp_path
):
    run_dir = tmp_path / "run"
    args = [*tiny_run_args(tiny_preset, small_csv, run_dir), "--save-every", "10"]
    result = subprocess.run(
        [sys.executable, "-c", FAILING_SAVES, *args],
        capture_output=True, text=True, env=script_environment(), cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert last_line(result).startswith("error: could not save checkpoint 20 in ")
    assert "No space left on device" in last_line(result)
    meta = checkpoints.latest_state(RunDir(run_dir).state_checkpoints)
    assert meta["global_step"] == 10  # the complete checkpoint before the failure
    resumed = run_script("train_jax.py", *tiny_run_args(tiny_preset, small_csv, run_dir),
                         "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_a_nan_loss_stops_at_that_step_keeping_earlier_checkpoints(
    tiny_preset, small_csv, tmp_path
):
    run_dir = tmp_path / "run"
    result = run_script(
        "train_jax.py", *tiny_run_args(tiny_preset, small_csv, run_dir),
        "--learning-rate", "1e30", "--schedule", "constant", "--lora-rank", "0",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("error: the training loss became nan at epoch 1, step "), line
    assert "Traceback" not in result.stderr
    assert not (run_dir / "summary.json").exists()  # no NaN model passed off as a result
    assert not (run_dir / "checkpoints" / "state").exists() or not any(
        p.name.isdigit() for p in (run_dir / "checkpoints" / "state").iterdir()
    )


@pytest.mark.slow
def test_a_second_training_on_a_live_run_directory_is_refused(tiny_preset, small_csv, tmp_path):
    run_dir = tmp_path / "run"
    first = start_script(  # still training when the second starts, however fast the machine
        "train_jax.py", *tiny_run_args(tiny_preset, small_csv, run_dir), "--epochs", "1000",
        log=tmp_path / "1.log",
    )  # fmt: skip
    try:
        # However loaded the machine: wait for the lock as long as the first run lives.
        while not (run_dir / ".lock").exists() or not (run_dir / ".lock").read_text():
            assert first.poll() is None, (tmp_path / "1.log").read_text()[-3000:]
            time.sleep(0.2)
        second = run_script("train_jax.py", *tiny_run_args(tiny_preset, small_csv, run_dir))
        assert second.returncode == 2
        assert last_line(second) == (
            f"error: {run_dir} is in use by a running training (pid {first.pid}); wait for it "
            "to end, or choose another --run-dir"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lock = RunDir(run_dir).lock()  # the kernel dropped the killed run's lock
    assert lock.left_by == f"pid {first.pid}"
    lock.release()
    assert not (run_dir / ".lock").exists()


def test_places_that_cannot_be_written_are_reported_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for run_dir in (a_file, a_file / "run", "/proc/jaxpref-run"):
        result = run_script("train_jax.py", "--devices", "cpu", "--run-dir", str(run_dir))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert last_line(result).startswith(f"error: cannot write the run directory {run_dir}")
        assert "tokenizing" not in result.stderr


def test_an_input_that_cannot_be_opened_is_one_error_naming_it(tmp_path):
    """Unopenable whoever runs it, root included (a file mode would not stop root): the path
    runs through a regular file."""
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(arena.DataError) as info:
        arena.read_arena_csv(a_file / "train.csv", labelled=True)
    assert str(info.value) == f"{a_file / 'train.csv'}: cannot open file (Not a directory)"


def test_training_data_of_one_class_is_refused_with_the_counts(tiny_preset, tmp_path):
    frame = pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str).head(60)
    frame[list(arena.LABEL_COLUMNS)] = ["1", "0", "0"]
    one_class = tmp_path / "one.csv"
    frame.to_csv(one_class, index=False)
    result = run_script(
        "train_jax.py", "--devices", "cpu", "--preset", str(tiny_preset), "--train-csv",
        str(one_class), "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result) == (
        f"error: {one_class}: only one class among the training rows (winner_model_a 54, "
        "winner_model_b 0, winner_tie 0); a model cannot learn to compare from that"
    )
    # The run directory tells the same story: train.log ends with the error, no lock is left.
    logged = (tmp_path / "run" / "train.log").read_text().strip().splitlines()[-1]
    assert logged.split(" ", 1)[1] == last_line(result)
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs 0: must be at least 1"),
        (["--valid-fraction", "1.5"], "--valid-fraction 1.5: must be below 1"),
        (["--learning-rate", "-1"], "--learning-rate -1.0: must be above 0"),
        (["--lora-rank", "-1"], "--lora-rank -1: must be at least 0"),
        (["--sequence-length", "2"], "--sequence-length 2: must be at least 8"),
        (["--devices", "gpu"], "no gpu devices found"),
    ],
)
def test_misused_flags_are_one_error_line(flags, message, tmp_path):
    result = run_script("train_jax.py", *flags, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert last_line(result).startswith("error: ") and message in last_line(result)


# Runs train_jax.py with the validation log loss of each epoch replaced by the next of a
# scripted list (argv[1], JSON), so that best-epoch selection is exercised where the best is not
# the last epoch; with "kill_after" the process dies like kill -9 once that epoch is saved.
SCRIPTED_VALIDATION = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the CLI sets it before TensorFlow loads
from jaxpref.training import checkpoints
script = json.loads(sys.argv.pop(1))
scripted = iter(script["losses"])
on_epoch_end = checkpoints.StateCheckpoint.on_epoch_end
def scripted_end(self, epoch, logs=None):
    logs = dict(logs or {}, val_log_loss=next(scripted))
    on_epoch_end(self, epoch, logs)
    if epoch + 1 == script.get("kill_after"):
        os._exit(137)
checkpoints.StateCheckpoint.on_epoch_end = scripted_end
from jaxpref.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def train_scripted(args: list[str], losses: list[float], kill_after: int | None = None):
    script = json.dumps({"losses": losses, "kill_after": kill_after})
    return subprocess.run(
        [sys.executable, "-c", SCRIPTED_VALIDATION, script, *args],
        capture_output=True, text=True, env=script_environment(), cwd=REPO, timeout=600,
    )  # fmt: skip


def assert_best_epoch(run_dir, epoch: int, loss: float) -> None:
    """summary.json, checkpoints/best and the newest state all name `epoch` as the best."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["best_epoch"], summary["best_val_log_loss"]) == (epoch, loss)
    best = [p.name for p in RunDir(run_dir).best_checkpoints.iterdir() if p.name.isdigit()]
    assert best == [str(epoch)]
    state = checkpoints.latest_state(RunDir(run_dir).state_checkpoints)
    assert (state["best_epoch"], state["best_val_log_loss"]) == (epoch, loss)


@pytest.mark.slow
def test_the_best_epoch_is_kept_when_later_epochs_are_worse(tiny_preset, small_csv, tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny_run_args(tiny_preset, small_csv, run_dir), "--epochs", "3"]
    result = train_scripted(args, [0.9, 0.5, 0.7])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_best_epoch(run_dir, 2, 0.5)  # epoch 3 was worse: its weights never replaced epoch 2's


@pytest.mark.slow
def test_a_resumed_epoch_worse_than_the_stored_best_keeps_the_stored_best(
    tiny_preset, small_csv, tmp_path
):
    run_dir = tmp_path / "run"
    killed = train_scripted(tiny_run_args(tiny_preset, small_csv, run_dir), [0.5], kill_after=1)
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert not (run_dir / "summary.json").exists()
    resume = ["--devices", "cpu", "--num-devices", "2", "--resume", "--run-dir", str(run_dir)]
    resumed = train_scripted(resume, [0.9])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2, step 0 (best so far 0.5000)" in resumed.stderr
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [1, 2]
    assert_best_epoch(run_dir, 1, 0.5)


@pytest.mark.slow
def test_inference_on_a_damaged_run_or_into_an_unwritable_place_is_one_line(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)

    def infer(*extra):
        return run_script("infer.py", "--devices", "cpu", "--run-dir", str(run_dir), *extra)

    unwritable = infer("--output", "/proc/jaxpref/submission.csv")
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert last_line(unwritable).startswith("error: cannot write the output directory /proc/")

    best = RunDir(run_dir).best_checkpoints
    for path in best.rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[:50])  # torn files
    damaged = infer("--output", str(tmp_path / "a.csv"))
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert last_line(damaged).startswith(f"error: {best}: cannot restore the best weights")

    shutil.rmtree(best)
    missing = infer("--output", str(tmp_path / "b.csv"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert last_line(missing) == (
        f"error: {best} is missing; is this the run directory of a finished training?"
    )
