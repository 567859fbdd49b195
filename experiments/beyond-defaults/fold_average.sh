#!/bin/bash
# Fold averaging scored out of fold: for each of the 3 grouped folds (seed 42) of the embedded
# sample, the 2 inner-fold models that nested_teachers.sh trained on that fold's training rows
# (each on half of them) predict the fold's rows twice: as one model whose weights are their
# mean (`export.py` with both runs, LoRA merged first) and as the mean of their calibrated
# predictions (`infer.py` with both runs). Writes ROOT/fold-average.oof.csv and
# ROOT/fold-mean.oof.csv, one prediction per embedded row.
#
#   bash experiments/beyond-defaults/fold_average.sh ROOT   (after nested_teachers.sh ROOT; ~10 min)
set -euo pipefail
ROOT=$(realpath -m "$1")
for k in 0 1 2; do
    T=$ROOT/teachers/$k
    python - "$T" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from jaxpref.data import arena

teacher = Path(sys.argv[1])
raw = pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str, keep_default_na=False)
seen = set(pd.read_csv(teacher / "train.csv", dtype=str)["id"])
raw[~raw["id"].isin(seen)].to_csv(teacher / "scored.csv", index=False)
PY
    python scripts/export.py --devices cpu --run-dir "$T/cv" --out "$T/average"
    python scripts/infer.py --devices cpu --run-dir "$T/average" --test-csv "$T/scored.csv" \
        --output "$T/average.csv"
    python scripts/infer.py --devices cpu --run-dir "$T/cv" --test-csv "$T/scored.csv" \
        --output "$T/mean.csv"
done
python - "$ROOT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

root = Path(sys.argv[1])
for name, out in (("average", "fold-average"), ("mean", "fold-mean")):
    parts = [pd.read_csv(root / "teachers" / str(k) / f"{name}.csv") for k in range(3)]
    pd.concat(parts).to_csv(root / f"{out}.oof.csv", index=False)
PY
