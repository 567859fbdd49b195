"""The score job: a reward model's rewards (--objective reward) for every row of a file, as CSV.

Two kinds of file:

- *pairs*, any `sources.read_rows` source: ``id, reward_a, reward_b``, the rewards of each
  row's responses A and B. Preference records (chosen/rejected) are read as `read_rows` reads
  them, the chosen response on side A or B by a fixed draw, so a column ``chosen`` ("a" or "b")
  says which; an arena CSV's rows keep their own ids and sides.
- *single responses* (`sources.read_responses`: a prompt and a response a record):
  ``id, reward``.

Rewards are the model's raw scores (no temperature), the logits its transformers export
gives, one row per input row in order, nothing dropped; the file is written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jaxpref.config import ConfigError
from jaxpref.data import sources
from jaxpref.data.probabilities import ID_COLUMN, write_csv
from jaxpref.rundir import require_reward_run, writable_directory
from jaxpref.serve.predict import load_for_prediction

log = logging.getLogger("jaxpref")

REWARD_A, REWARD_B, REWARD, CHOSEN = "reward_a", "reward_b", "reward", "chosen"


def read_pairs_to_score(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of any `read_rows` source; labelled (the chosen side) for preference records,
    unlabelled for an arena CSV (a test file has no labels)."""
    labelled = sources.source_kind(path) != sources.ARENA_CSV
    return sources.read_rows(path, labelled=labelled)


def pair_rewards(frame: pd.DataFrame, rewards: np.ndarray) -> pd.DataFrame:
    """``id, reward_a, reward_b`` of `frame`'s rows, and ``chosen`` when they are labelled."""
    table = pd.DataFrame({ID_COLUMN: frame["id"], REWARD_A: rewards[:, 0], REWARD_B: rewards[:, 1]})
    if "label" in frame.columns:
        table[CHOSEN] = np.where(frame["label"].to_numpy() == 0, "a", "b")
    return table


def score_file(
    run_dir: str | os.PathLike,
    output: str | os.PathLike,
    pairs: str | os.PathLike | None = None,
    responses: str | os.PathLike | None = None,
    **options,
) -> Path:
    """Write the rewards of the rows of `pairs` or of `responses` (one of them) by the reward
    model in `run_dir` (a run or a bundle) to `output`; `options` are those of
    `serve.predict.load_for_prediction`. The file is read before the model loads."""
    if (pairs is None) == (responses is None):
        raise ConfigError("score a file of pairs or a file of responses: give one of them")
    require_reward_run(run_dir)
    writable_directory(Path(output).absolute().parent, "the output directory")
    frame = read_pairs_to_score(pairs) if pairs is not None else sources.read_responses(responses)
    loaded = load_for_prediction(run_dir, **options)
    if pairs is not None:
        table = pair_rewards(frame, loaded.rewards(frame))
    else:
        table = pd.DataFrame({ID_COLUMN: frame["id"], REWARD: loaded.score(frame)})
    kind = "pairs" if pairs is not None else "responses"
    log.info("scored %d %s of %s", len(table), kind, pairs if pairs is not None else responses)
    return write_csv(table, output)
