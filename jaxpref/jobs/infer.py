"""The infer job: predict a file of rows with a run, a bundle or several runs (their average)
and write the submission."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref import rundir
from jaxpref.data import arena, sources
from jaxpref.data.probabilities import write_submission
from jaxpref.rundir import writable_directory
from jaxpref.serve.predict import predict_run

log = logging.getLogger("jaxpref")


def predict_runs(
    run_dirs: Sequence[str | os.PathLike], frame: pd.DataFrame, **options
) -> np.ndarray:
    """The mean of the runs' calibrated probabilities (n, 3) (`rundir.expand_runs`); `options` are
    those of `predict_run`.

    Averaging a cross-validation's fold models is the usual final submission: each saw a
    different share of the rows, and their mean is steadier than any one of them.
    """
    import keras

    runs = rundir.expand_runs(run_dirs)
    total = np.zeros((len(frame), arena.NUM_CLASSES))
    for number, run in enumerate(runs, start=1):
        if len(runs) > 1:
            log.info("predicting with run %d of %d: %s", number, len(runs), run)
        total += predict_run(run, frame, **options)
        keras.backend.clear_session()  # one model in memory at a time
    return total / len(runs)


def infer(
    run_dirs: Sequence[str | os.PathLike],
    test_file: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
    tta: bool = False,
    precision: str = "auto",
    quantize: str | None = None,
    model_parallel: int | None = None,
) -> Path:
    """Predict every row of `test_file` with the runs' best weights (averaged over the runs,
    `predict_runs`) and write the submission; the options are `serve.predict.predict_run`'s.

    `test_file` is any `sources.read_rows` source, read unlabelled: an arena CSV, or preference
    records, whose labels are dropped (their rows, ids and A/B order are those of
    `read_rows(test_file)`, so the submission lines up with its labels)."""
    writable_directory(Path(output).parent, "the output directory")
    frame = sources.read_rows(test_file, labelled=False)
    probs = predict_runs(
        run_dirs, frame, batch_size=batch_size, devices=devices, num_devices=num_devices,
        tta=tta, precision=precision, quantize=quantize, model_parallel=model_parallel,
    )  # fmt: skip
    return write_submission(frame["id"], probs, output)
