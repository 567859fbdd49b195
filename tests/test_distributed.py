"""Several processes on 127.0.0.1 with gloo: same code path as several VMs with NCCL."""

import re
import time

import jax
import numpy as np
import orbax.checkpoint as oc
import pandas as pd
import pytest
from conftest import (
    closed_port,
    free_port,
    run_processes,
    run_script,
    start_script,
    tiny_run_args,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]


def _args(tiny_preset, small_csv, run_dir):
    return [*tiny_run_args(tiny_preset, small_csv, run_dir), "--verbose"]


def _final_weights(run_dir) -> dict:
    """The last state checkpoint's trainable weights, as numpy arrays by path."""
    steps = [p for p in (run_dir / "checkpoints" / "state").iterdir() if p.name.isdigit()]
    path = max(steps, key=lambda p: int(p.name))
    meta = oc.v1.pytree_metadata(path, checkpointable_name="pytree").metadata
    abstract = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), meta)
    tree = oc.v1.load_checkpointables(path, {"pytree": abstract})["pytree"]
    flat = jax.tree_util.tree_flatten_with_path(tree["trainable_variables"])[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.fixture(scope="module")
def runs(tiny_preset, small_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    start = time.time()
    codes = run_processes("train_jax.py", _args(tiny_preset, small_csv, root / "2x2"), 2, root)
    seconds = time.time() - start
    assert codes == [0, 0], (root / "train_jax.py.1.log").read_text()[-3000:]
    single = run_script("train_jax.py", *tiny_run_args(tiny_preset, small_csv, root / "1x4", 4))
    assert single.returncode == 0, single.stderr[-3000:]
    return root, seconds


def test_every_process_ends_with_identical_weights(runs):
    root, seconds = runs
    fingerprints = [
        re.findall(
            r"final weights fingerprint.*: (\S+)", (root / f"train_jax.py.{i}.log").read_text()
        )
        for i in range(2)
    ]
    assert fingerprints[0] and fingerprints[0] == fingerprints[1]
    print(f"2 processes x 2 devices trained in {seconds:.0f} s")


def test_two_by_two_matches_one_by_four(runs):
    root, _ = runs
    a, b = _final_weights(root / "2x2"), _final_weights(root / "1x4")
    assert a.keys() == b.keys()
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    print(f"max weight difference 2x2 vs 1x4: {diff:.3e}")
    assert diff < 1e-4
    ha, hb = (pd.read_csv(root / d / "history.csv") for d in ("2x2", "1x4"))
    np.testing.assert_allclose(ha["val_log_loss"], hb["val_log_loss"], rtol=1e-5)


def test_one_set_of_outputs(runs):
    root, _ = runs
    run_dir = root / "2x2"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best", "state"}
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]  # written once, not once per process
    assert len(list(root.glob("**/summary.json"))) == 2  # one for 2x2, one for 1x4


def test_inference_in_two_processes_writes_one_submission(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "submission.csv"
    args = ["--devices", "cpu", "--num-devices", "2", "--run-dir", str(root / "2x2"),
            "--output", str(out), "--batch-size", "4"]  # fmt: skip
    assert run_processes("infer.py", args, 2, tmp_path) == [0, 0]
    sub = pd.read_csv(out, dtype={"id": str}).set_index("id")
    assert sub.index.tolist() == ["136060", "211333", "1233961"]
    # The same rows predicted by one process on 4 devices: equal, id by id.
    single_out = tmp_path / "single.csv"
    single = run_script("infer.py", "--devices", "cpu", "--num-devices", "4", "--run-dir",
                        str(root / "2x2"), "--output", str(single_out))  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one = pd.read_csv(single_out, dtype={"id": str}).set_index("id").loc[sub.index]
    np.testing.assert_allclose(sub.to_numpy(), one.to_numpy(), atol=1e-6)


@pytest.mark.serial  # times the survivor's exit: alone, so load cannot stretch it
def test_a_dead_process_stops_the_others(tiny_preset, small_csv, tmp_path):
    port = free_port()
    args = [*_args(tiny_preset, small_csv, tmp_path / "run"), "--epochs", "20",
            "--heartbeat-timeout", "10", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2"]  # fmt: skip
    procs = [
        start_script("train_jax.py", *args, "--process-id", str(i), log=tmp_path / f"{i}.log")
        for i in range(2)
    ]
    try:
        deadline = time.time() + 300
        train_log = tmp_path / "run" / "train.log"
        while not (train_log.exists() and "epoch 1:" in train_log.read_text()):
            assert time.time() < deadline and procs[0].poll() is None
            time.sleep(0.1)
        procs[1].kill()
        killed = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code != 0
    assert "another task died" in (tmp_path / "0.log").read_text()
    print(f"surviving process exited {code} after {waited:.0f} s")
    assert waited < 60


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
    with closed_port() as port:  # bound, never listening: nothing can answer there
        result = run_script(
            "train_jax.py", "--devices", "cpu", "--run-dir", str(tmp_path / "run"),
            "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
            "--process-id", "1", "--distributed-timeout", "5", timeout=120,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: could not join the other processes" in result.stderr
