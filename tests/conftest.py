"""Shared fixtures. Tests run on CPU with 4 simulated XLA devices (set before JAX starts)."""

import os
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["JAXPREF_CACHE"] = tempfile.mkdtemp(prefix="jaxpref-test-cache-")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import csv  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from jaxpref import data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN_COLUMNS = [
    "id",
    "model_a",
    "model_b",
    "prompt",
    "response_a",
    "response_b",
    *data.LABEL_COLUMNS,
]


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> Path:
    """A tiny random DeBERTa-v3 keras-hub preset with a vocabulary trained on the arena sample."""
    from jaxpref.tiny_preset import arena_texts, build_tiny_deberta_preset

    return build_tiny_deberta_preset(
        tmp_path_factory.mktemp("tiny_deberta"),
        arena_texts(data.DEFAULT_TRAIN_CSV),
        vocab_size=600,
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=256,
        seed=0,
    )


@pytest.fixture(scope="session")
def decoder_presets(tmp_path_factory) -> dict[str, Path]:
    """A tiny random decoder preset of every family in jaxpref.families (one block, hidden 32)."""
    from jaxpref.families import FAMILIES
    from jaxpref.tiny_preset import arena_texts, build_tiny_decoder_preset

    texts = arena_texts(data.DEFAULT_TRAIN_CSV, limit=60)
    root = tmp_path_factory.mktemp("tiny_decoders")
    return {
        name: build_tiny_decoder_preset(root / name, name, texts, vocab_size=400, num_layers=1)
        for name in FAMILIES
    }


GOOD = ["excellent", "superb", "brilliant", "perfect"]
BAD = ["terrible", "awful", "useless", "wrong"]
FILLER = "the answer is that we can say this about the topic in question here".split()


def write_learnable_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """Arena-format rows whose label follows from the text: a 'good' word beats a 'bad' one."""
    rng = random.Random(seed)

    def reply(good: bool) -> str:
        words = rng.sample(FILLER, 5) + [rng.choice(GOOD if good else BAD)]
        rng.shuffle(words)
        return " ".join(words)

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRAIN_COLUMNS)
        for i in range(rows):
            label = i % 3
            a_good, b_good = [
                (True, False),
                (False, True),
                rng.choice([(True, True), (False, False)]),
            ][label]
            prompt = json.dumps([f"question {rng.randint(0, 999)} about the topic"])
            onehot = [int(label == k) for k in range(3)]
            writer.writerow(
                [
                    i + 1,
                    "m1",
                    "m2",
                    prompt,
                    json.dumps([reply(a_good)]),
                    json.dumps([reply(b_good)]),
                    *onehot,
                ]
            )
    return path


def script_environment() -> dict[str, str]:
    """This process's environment less what conftest set for it: scripts start as a user's do."""
    hidden = ("XLA_FLAGS", "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if k not in hidden}


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run scripts/<script> the way a user does, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_environment(),
        cwd=REPO,
    )


def infer_predictions(run_dir, test_csv, out, *flags) -> pd.DataFrame:
    """infer.py's submission for `test_csv` from a run directory or a bundle, indexed by id."""
    result = run_script(
        "infer.py", "--devices", "cpu", "--run-dir", str(run_dir), "--test-csv", str(test_csv),
        "--output", str(out), *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(out, dtype={"id": str}).set_index("id")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_script(script: str, *args: str, log: Path) -> subprocess.Popen:
    """Start scripts/<script> in the background, output to `log` (the caller waits or kills)."""
    env = {**script_environment(), "PYTHONUNBUFFERED": "1"}
    handle = open(log, "w")
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )


def run_processes(script: str, args: list[str], count: int, logs: Path, timeout: int = 600):
    """Run `count` processes of one job on 127.0.0.1; their exit codes (killed on timeout)."""
    port = free_port()
    procs = [
        start_script(
            script, *args, "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", str(count), "--process-id", str(i),
            log=logs / f"{script}.{i}.log",
        )
        for i in range(count)
    ]  # fmt: skip
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """The first 240 rows of the embedded sample: 27 steps an epoch at batch 8."""
    import pandas as pd

    path = tmp_path_factory.mktemp("small") / "train.csv"
    pd.read_csv(data.DEFAULT_TRAIN_CSV, dtype=str).head(240).to_csv(path, index=False)
    return path


def tiny_run_args(preset: Path, train_csv: Path, run_dir: Path, devices: int = 2) -> list[str]:
    """Flags of a short training run on the tiny preset: 27 steps an epoch on `small_csv`."""
    return [
        "--devices", "cpu", "--num-devices", str(devices), "--preset", str(preset),
        "--train-csv", str(train_csv), "--run-dir", str(run_dir), "--epochs", "2",
        "--batch-size", "8", "--sequence-length", "64", "--learning-rate", "3e-3",
    ]  # fmt: skip
