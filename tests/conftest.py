"""Shared fixtures. Tests run on CPU with 4 simulated XLA devices (set before JAX starts).

Under pytest-xdist (`make test`: two workers) the controller imports this file first: the
caches below are created once there and inherited by the workers through the environment, and
`built_once` builds the session presets once for all workers.
"""

import os
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAXPREF_CACHE", tempfile.mkdtemp(prefix="jaxpref-test-cache-"))
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
# The child processes' persistent XLA compilation cache (script_environment): one per test
# session, so a tiny model's programs compile once, not once per process that trains it.
XLA_CACHE = os.environ.setdefault("JAXPREF_TEST_XLA_CACHE", tempfile.mkdtemp(prefix="xla-"))

import csv  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from reference_run import TINY_DEBERTA  # noqa: E402

from jaxpref.data import arena, text  # noqa: E402

# CI: the same examples every run (a failure reproduces), no example database in the repository.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
TRAIN_COLUMNS = [
    "id",
    "model_a",
    "model_b",
    "prompt",
    "response_a",
    "response_b",
    *arena.LABEL_COLUMNS,
]


def session_directory(tmp_path_factory) -> Path:
    """The test session's temporary root, shared by all xdist workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(path)` once per test session, whichever worker asks first; the others wait for it
    (a file lock) and reuse the directory. Tests must not change what it holds (copy it)."""
    path = session_directory(tmp_path_factory) / name
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed half-way
            path.mkdir(parents=True)
            build(path)
            (path / ".built").touch()
    return path


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> Path:
    """A tiny random DeBERTa-v3 keras-hub preset with a vocabulary trained on the arena sample."""
    from jaxpref.models.tiny_preset import arena_texts, build_tiny_deberta_preset

    def build(path):
        build_tiny_deberta_preset(path, arena_texts(arena.DEFAULT_TRAIN_CSV), **TINY_DEBERTA)

    return built_once(tmp_path_factory, "tiny_deberta", build)


@pytest.fixture(scope="session")
def decoder_presets(tmp_path_factory) -> dict[str, Path]:
    """A tiny random decoder preset of every family in models.families (one block, hidden 32)."""
    from jaxpref.models.families import FAMILIES
    from jaxpref.models.tiny_preset import arena_texts, build_tiny_decoder_preset

    def build(root):
        texts = arena_texts(arena.DEFAULT_TRAIN_CSV, limit=60)
        for name in FAMILIES:
            build_tiny_decoder_preset(root / name, name, texts, vocab_size=400, num_layers=1)

    root = built_once(tmp_path_factory, "tiny_decoders", build)
    return {name: root / name for name in FAMILIES}


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


def pair_texts(n: int) -> dict:
    """`text.format_pairs`-style columns of `n` rows, row i about i + 1 times longer than row 0."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return {
        key: np.asarray(
            [f"{key} " + " ".join(words[: (i % len(words)) + 1]) * (i + 1) for i in range(n)],
            dtype=object,
        )
        for key in text.FEATURE_KEYS
    }


def write_parquet_shards(directory: Path, records: list[dict], shards: int) -> Path:
    """`records` as a folder of Parquet shards named as a Hugging Face repository's
    (``train-00000-of-00002.parquet``), contiguous, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    for i, part in enumerate(contiguous(records, shards)):
        pq.write_table(
            pa.Table.from_pylist(part), directory / f"train-{i:05d}-of-{shards:05d}.parquet"
        )
    return directory


def write_saved_dataset(directory: Path, records: list[dict], shards: int) -> Path:
    """`records` as `datasets` 3/4 `Dataset.save_to_disk(directory, num_shards=shards)` writes
    them, without the package: contiguous shards ``data-00000-of-0000N.arrow``, each an Arrow
    IPC stream whose schema metadata holds the features (ArrowWriter), and state.json and
    dataset_info.json with their first-level keys sorted."""
    import pyarrow as pa

    directory.mkdir(parents=True)
    schema = pa.Table.from_pylist(records).schema
    features = {field.name: arrow_feature(field.type) for field in schema}
    fingerprint = "0123456789abcdef"
    metadata = {"info": {"features": features}, "fingerprint": fingerprint}
    schema = schema.with_metadata({"huggingface": json.dumps(metadata)})
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for name, part in zip(names, contiguous(records, shards), strict=True):
        table = pa.Table.from_pylist(part, schema=schema)
        with pa.ipc.new_stream(str(directory / name), schema) as writer:
            writer.write_table(table, max_chunksize=2)  # several record batches a shard
    state = {
        "_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": None,
    }  # fmt: skip
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return directory


def contiguous(records: list, shards: int) -> list[list]:
    """`records` in `shards` contiguous parts, the first ones a row longer (Dataset.shard)."""
    size, extra = divmod(len(records), shards)
    bounds = [i * size + min(i, extra) for i in range(shards + 1)]
    return [records[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def arrow_feature(kind) -> dict:
    """The `datasets` 4 feature of an Arrow type: Value, List or a dict of struct fields."""
    import pyarrow as pa

    if pa.types.is_list(kind):
        return {"feature": arrow_feature(kind.value_type), "_type": "List"}
    if pa.types.is_struct(kind):
        return {field.name: arrow_feature(field.type) for field in kind}
    return {"dtype": "string" if pa.types.is_string(kind) else str(kind), "_type": "Value"}


def script_environment() -> dict[str, str]:
    """This process's environment less what conftest set for it: scripts start as a user's do,
    with the session's persistent compilation cache (the same programs would recompile in every
    process). In-process tests, those that count compilations among them, do not use it."""
    hidden = ("XLA_FLAGS", "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "JAXPREF_TEST_XLA_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(
        JAX_COMPILATION_CACHE_DIR=XLA_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # A size limit turns on JAX's file lock around reads and writes: processes of both
        # workers share the cache, and an entry being written is never read half-way.
        JAX_COMPILATION_CACHE_MAX_SIZE=str(8 * 2**30),
    )
    return env


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


# `jaxpref COMMAND ...` lines run one after another in one process (argv[1]: a JSON list of
# argument lists), stopping at the first that fails: the frameworks load once, not per command.
SEVERAL_COMMANDS = """
import json, sys
import keras
from jaxpref.cli import main
for argv in json.loads(sys.argv[1]):
    keras.backend.clear_session()
    code = main(argv)
    if code:
        sys.exit(code)
"""


def run_commands(*commands: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run several `jaxpref` commands in one fresh process (as `run_script` runs one); for
    tests of what the commands produce, not of the process boundary between them."""
    return subprocess.run(
        [sys.executable, "-c", SEVERAL_COMMANDS, json.dumps([list(map(str, c)) for c in commands])],
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
    """A port free now; another process may take it before ours binds it (run_processes
    retries then). For a port that must stay unanswered, hold `closed_port()` instead."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class closed_port:
    """A port bound but not listening while the `with` lasts: connections to it are refused,
    and no other process can take it meanwhile."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def start_script(script: str, *args: str, log: Path) -> subprocess.Popen:
    """Start scripts/<script> in the background, output to `log` (the caller waits or kills)."""
    return start_python(str(REPO / "scripts" / script), *args, log=log)


def start_python(*argv: str, log: Path) -> subprocess.Popen:
    """Start `python ARGV...` in the background as `start_script` does."""
    env = {**script_environment(), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )


def run_processes(script: str, args: list[str], count: int, logs: Path, timeout: int = 600):
    """Run `count` processes of one job on 127.0.0.1; their exit codes (killed on timeout).

    The coordinator's port is picked free, then bound by process 0 a moment later: if another
    program took it in between, the attempt is repeated on a new port (up to 3 times)."""
    for _ in range(3):
        codes = start_and_wait(script, args, count, logs, free_port(), timeout)
        lost_port = any(
            "address already in use" in (logs / f"{script}.{i}.log").read_text().lower()
            for i in range(count)
        )
        if codes == [0] * count or not lost_port:
            return codes
    return codes


def start_and_wait(script, args, count, logs, port, timeout) -> list[int]:
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

    def build(path):
        pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str).head(240).to_csv(path / "train.csv",
                                                                        index=False)  # fmt: skip

    return built_once(tmp_path_factory, "small", build) / "train.csv"


@pytest.fixture(scope="session")
def tiny_run(tiny_preset, small_csv, tmp_path_factory) -> Path:
    """A finished 1-epoch float32 LoRA run (`tiny_run_args` on 2 devices), trained once per
    test session: read it, or copy it (`shutil.copytree`) before changing anything in it."""

    def build(root):
        result = run_script("train_jax.py", *tiny_run_args(tiny_preset, small_csv, root / "run"),
                            "--epochs", "1")  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "tiny_run", build) / "run"


def tiny_run_args(preset: Path, train_csv: Path, run_dir: Path, devices: int = 2) -> list[str]:
    """Flags of a short training run on the tiny preset: 27 steps an epoch on `small_csv`."""
    return [
        "--devices", "cpu", "--num-devices", str(devices), "--preset", str(preset),
        "--train-csv", str(train_csv), "--run-dir", str(run_dir), "--epochs", "2",
        "--batch-size", "8", "--sequence-length", "64", "--learning-rate", "3e-3",
    ]  # fmt: skip
