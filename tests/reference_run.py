"""A fixed, seeded tiny-DeBERTa training run whose validation predictions must never drift.

`python tests/reference_run.py OUT_DIR` builds the tiny preset, trains through the command line
(2 devices, 2 epochs, default modelling flags) and prints where `valid_predictions.csv` is.
`tests/fixtures/reference_valid_predictions.csv` was recorded by this script at commit a101e1b,
before the package was restructured; `test_reference.py` reruns it and compares (<= 1e-6), so a
refactoring that changes behaviour fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = 240
# The tiny preset's shape (the tests' session preset, conftest.tiny_preset, is the same).
TINY_DEBERTA = dict(
    vocab_size=600, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
    max_sequence_length=256, seed=0,
)  # fmt: skip


def reference_run(out: Path, preset: Path | None = None, env: dict[str, str] | None = None) -> Path:
    """Train the reference run under `out` on `preset` (built there when None; the tiny preset
    of `TINY_DEBERTA` on the arena sample); returns its valid_predictions.csv."""
    import pandas as pd

    hidden = ("XLA_FLAGS", "JAX_PLATFORMS")
    env = {k: v for k, v in (env or os.environ).items() if k not in hidden}
    env["KERAS_BACKEND"] = "jax"
    env["JAXPREF_CACHE"] = "off"
    if preset is None:
        preset = out / "preset"
        build = [sys.executable, "-c", BUILD_PRESET, str(preset), repr(TINY_DEBERTA)]
        subprocess.run(build, check=True, env=env, cwd=REPO)
    from jaxpref.data import arena

    train_csv = out / "train.csv"
    pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str).head(ROWS).to_csv(train_csv, index=False)
    run_dir = out / "run"
    subprocess.run(
        [
            sys.executable, str(REPO / "scripts" / "train_jax.py"),
            "--devices", "cpu", "--num-devices", "2", "--preset", str(preset),
            "--train-csv", str(train_csv), "--run-dir", str(run_dir), "--epochs", "2",
            "--batch-size", "8", "--sequence-length", "64", "--learning-rate", "3e-3",
            "--attention", "keras_hub",  # the attention of a101e1b
        ],
        check=True, env=env, cwd=REPO,
    )  # fmt: skip
    return run_dir / "valid_predictions.csv"


BUILD_PRESET = """
import ast, sys
from jaxpref.data import arena
from jaxpref.models.tiny_preset import arena_texts, build_tiny_deberta_preset
shape = ast.literal_eval(sys.argv[2])
build_tiny_deberta_preset(sys.argv[1], arena_texts(arena.DEFAULT_TRAIN_CSV), **shape)
"""

if __name__ == "__main__":
    print(reference_run(Path(sys.argv[1]).resolve()))
