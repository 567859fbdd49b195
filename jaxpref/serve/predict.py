"""Inference: rebuild a trained model from its run directory, predict, write submission.csv;
several runs (a cross-validation's folds) predict as their average."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from jaxpref import safety
from jaxpref.config import (
    INFERENCE_PRECISIONS,
    ConfigError,
    TrainConfig,
    require_reward_model,
)
from jaxpref.data import arena
from jaxpref.data.responses import PROMPT, RESPONSE
from jaxpref.data.text import format_sides
from jaxpref.inputs import feeding, token_store
from jaxpref.inputs.batching import Batch
from jaxpref.inputs.featurize import (
    FeaturizedRows,
    featurize,
    featurize_responses,
    one_per_response,
)
from jaxpref.inputs.packers import Packer
from jaxpref.models import objective, presets
from jaxpref.monitoring import Ticker
from jaxpref.parallel import distribution, sharding
from jaxpref.rundir import CheckpointError, RunDir
from jaxpref.scoring import calibration
from jaxpref.serve import bundle

log = logging.getLogger("jaxpref")


def load_run(run_dir: str | os.PathLike, precision: str | None = None, quantize: str | None = None):
    """(model with the best weights, its packer, TrainConfig) from a run directory or an
    exported bundle (`serve.bundle`), in `precision` (None: the precision it was trained in).

    `quantize="int8"`: the backbone's LoRA factors merged and its weights quantized to int8
    once loaded (`models.quantize.quantize_backbone`; not with a float16 compute dtype).
    The distribution must already be set (`distribution.setup`) so that the restored weights
    land on every device. A directory from elsewhere loads no code: its parts stay inside it,
    and its preset passes `safety` (in `backbones`) before keras-hub reads it.
    """
    if bundle.is_bundle(run_dir):
        loaded = bundle.load_bundle(run_dir, precision)
    else:
        loaded = restore_run(run_dir, precision)
    if quantize is not None:
        from jaxpref.models.quantize import quantize_backbone

        log.info("quantized to %s: %s", quantize, quantize_backbone(loaded[0], quantize).describe())
    return loaded


def restore_run(run_dir: str | os.PathLike, precision: str | None = None):
    """(model, its packer, TrainConfig) of a run directory's best checkpoint (`load_run`)."""
    from jaxpref.models import preference as model_lib

    paths = RunDir(run_dir)
    for part in (paths.config, paths.best_checkpoints, paths.preset):
        safety.check_inside(paths.require(part), paths.root, "run directory entry")
    cfg = TrainConfig.from_json(paths.config)
    if precision is not None:
        cfg = cfg.replace(precision=precision)
    checkpoint, preset = paths.best_checkpoints, str(paths.preset)
    distribution.seed_keras(cfg.run.seed)  # identical initial values on every process
    model = model_lib.build_model(
        cfg.model, cfg.data.sequence_length, preset=preset, load_weights=False
    )
    # Orbax restores into the compiled state tree (keras needs the optimizer attribute); the
    # optimizer itself is never stepped here.
    objective.compile_model(model)
    try:
        distribution.restore_checkpoint(model, checkpoint)
    except Exception as err:  # Orbax and Keras raise many types for a damaged checkpoint
        raise CheckpointError(
            f"{checkpoint}: cannot restore the best weights ({type(err).__name__}: "
            f"{(str(err).strip().splitlines() or [''])[0]}); this run directory is damaged"
        ) from None
    return model, model.build_packer(preset, cfg.data.sequence_length), cfg


def predict_rows(
    model,
    rows: FeaturizedRows,
    plan: Sequence[Batch],
    tta: bool = False,
    label: str = "predicting",
) -> np.ndarray:
    """Class probabilities (n, 3) for every featurized row, in input order; none dropped.

    With `tta`, each row is also predicted with its sides swapped and the mirrored prediction
    averaged in: the result then mirrors exactly when A and B are swapped.
    """
    if tta:
        direct = predict_rows(model, rows, plan)
        swapped = predict_rows(model, rows.swapped(), plan)
        return (direct + swapped[:, list(arena.MIRROR)]) / 2
    return predict_outputs(model, rows, plan, label)


def predict_outputs(
    model, rows: FeaturizedRows, plan: Sequence[Batch], label: str = "predicting"
) -> np.ndarray:
    """`model`'s outputs (n, k) for every featurized row, in input order, none dropped: a
    preference model's class probabilities, a reward scorer's side rewards (n, 2). Progress
    is reported as `label` (`predict_progress`)."""
    import jax

    ds = feeding.make_dataset(rows, [plan], None, jax.process_index(), jax.process_count())
    sizes = [int((b.weights > 0).sum()) for b in plan]
    watch = predict_progress(label, sizes)
    outputs = np.asarray(model.predict(ds, verbose=0, callbacks=[watch]), "float64")
    fed = np.concatenate([b.rows for b in plan])
    real = np.concatenate([b.weights for b in plan]) > 0
    out = np.full((len(rows), outputs.shape[1]), np.nan)
    out[fed[real]] = outputs[real]
    if np.isnan(out).any():
        raise RuntimeError("some rows received no prediction")
    return out


def predict_frame(
    model, packer: Packer, frame: pd.DataFrame, batch_size: int, tta: bool = False
) -> np.ndarray:
    """Class probabilities (n, 3) for every row of `frame`, in order, fed by `packer`."""
    cache = token_store.default_cache_dir()
    rows = featurize(frame, packer, bool(model.side_features), cache)
    return predict_rows(model, rows, rows.plan(batch_size), tta)


def inference_precision(requested: str, platform: str) -> str | None:
    """The dtype policy to predict in; None keeps the run's own.

    "auto" is the run's precision on GPU/TPU and float32 on CPU, where bfloat16 and float16
    are emulated (slower, and less precise).
    """
    if requested not in INFERENCE_PRECISIONS:
        raise ConfigError(
            f"--precision {requested}: expected one of {', '.join(INFERENCE_PRECISIONS)}"
        )
    if requested == "auto":
        return "float32" if platform == "cpu" else None
    return requested


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run's (or bundle's) best weights on the selected devices, with what its predictions
    need: its packer, the global batch size and the calibration temperature."""

    model: Any
    packer: Packer
    config: TrainConfig
    batch_size: int
    temperature: float
    source: str = ""  # the run directory or bundle, for messages

    def predict(self, frame: pd.DataFrame, tta: bool = False) -> np.ndarray:
        """Calibrated probabilities (n, 3) for every row of `frame`, in order."""
        probs = predict_frame(self.model, self.packer, frame, self.batch_size, tta)
        return calibration.apply_temperature(probs, self.temperature)

    @functools.cached_property
    def reward_scorer(self):
        """The model's `reward_scorer` (built once: each compiles its own predict function);
        ConfigError for a model without rewards (`config.require_reward_model`)."""
        require_reward_model(self.config, self.source)
        return self.model.reward_scorer()

    def rewards(self, frame: pd.DataFrame) -> np.ndarray:
        """Side rewards (n, 2), [reward of response A, of response B], of every row of an arena
        frame, in order: a reward model's raw scores (no temperature), what its transformers
        export outputs as logits. P(A wins) / P(B wins) is exp((rA - rB) / T)."""
        scorer = self.reward_scorer
        rows = featurize(frame, self.packer, False, token_store.default_cache_dir())
        return predict_outputs(scorer, rows, rows.plan(self.batch_size), "scoring")

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Rewards (n,) of single responses (`data.responses` rows: ``prompt`` and
        ``response`` lists of turns), in order: each the reward it gets as a side of any pair
        (`featurize.featurize_responses` packs two a row)."""
        scorer = self.reward_scorer
        contexts, replies = format_sides(frame[PROMPT], frame[RESPONSE])
        cache = token_store.default_cache_dir()
        rows = featurize_responses(contexts, replies, self.packer, cache)
        sides = predict_outputs(scorer, rows, rows.plan(self.batch_size), "scoring")
        return one_per_response(sides, len(frame))


def load_for_prediction(
    run_dir: str | os.PathLike,
    batch_size: int | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
    precision: str = "auto",
    quantize: str | None = None,
    model_parallel: int | None = None,
) -> LoadedRun:
    """Set the distribution over `devices` and load a run's (or bundle's) best weights there.

    `batch_size` defaults to the training batch rounded up to a multiple of the devices;
    `precision` is one of config.INFERENCE_PRECISIONS (`inference_precision`); `quantize`
    ("int8") quantizes the backbone once loaded (`load_run`); `model_parallel` shards each
    weight over that many devices (None: the run's own, or the greatest common divisor of it
    and the device count when that does not divide, 1 for a bundle). For decoder LLMs the
    memory estimate per device is logged first, and a prediction that cannot fit is refused.
    """
    paths = RunDir(run_dir)
    cfg = TrainConfig.from_json(RunDir.require(paths.config))
    is_run = paths.preset.exists()  # a run directory, not a bundle
    preset = str(paths.preset if is_run else bundle.Bundle(run_dir).backbone)
    if model_parallel is None:  # the run's own, shrunk to what the devices allow
        trained = cfg.devices.model_parallel if is_run else 1
        model_parallel = distribution.fitting_model_axis(trained, devices, num_devices)
    selected = distribution.setup(devices, num_devices, batch_size, model_parallel, preset)
    dtype = inference_precision(precision, distribution.platform_of(selected))
    if quantize is not None:
        from jaxpref.models.quantize import check_quantizable

        check_quantizable(quantize, dtype or cfg.model.precision)
    if batch_size is None:
        batch_size = -(-cfg.optim.batch_size // len(selected)) * len(selected)
    predicted = cfg.replace(precision=dtype or cfg.model.precision, batch_size=batch_size)
    check_memory(preset, predicted, selected, model_parallel, quantize)
    model, packer, cfg = load_run(run_dir, dtype, quantize)
    temperature = calibration.load_temperature(paths.calibration)
    return LoadedRun(model, packer, cfg, batch_size, temperature, os.fspath(run_dir))


def check_memory(
    preset: str, cfg: TrainConfig, devices: list, model_parallel: int, quantize: str | None
) -> None:
    """For a decoder LLM preset, log the estimate of what predicting with `cfg`'s batch size,
    sequence length and precision holds per device (`sharding.inference_memory_estimate`) and
    refuse, in one line, what exceeds a device's memory."""
    from jaxpref.models import lora
    from jaxpref.models import preference as model_lib

    decoder = presets.probe(preset)
    if decoder.family is None:
        return  # an encoder: small next to any accelerator
    targets = lora.target_layers(cfg.model.lora_targets, decoder.family)
    estimate = sharding.inference_memory_estimate(
        decoder.backbone_config, cfg.optim.batch_size, cfg.data.sequence_length,
        cfg.model.lora_rank, targets,
        dtype=cfg.model.precision, mesh=sharding.mesh_shape(len(devices), model_parallel),
        quantize=quantize,
        fused_attention=distribution.platform_of(devices) == "gpu",
        sequences_per_row=model_lib.sequences_per_row(cfg.model.architecture),
    )  # fmt: skip
    log.info("memory estimate per device for prediction: %s", estimate.describe())
    remedies = "raise --model-parallel or lower --batch-size" + quantize_remedy(quantize)
    sharding.check_devices_fit(estimate, devices, "prediction", remedies)


def quantize_remedy(quantize: str | None) -> str:
    return "" if quantize else ", or pass --quantize int8 (with a bfloat16 or float32 precision)"


def predict_run(
    run_dir: str | os.PathLike,
    frame: pd.DataFrame,
    batch_size: int | None = None,
    devices: str = "auto",
    num_devices: int | None = None,
    tta: bool = False,
    precision: str = "auto",
    quantize: str | None = None,
    model_parallel: int | None = None,
) -> np.ndarray:
    """Calibrated probabilities (n, 3) of a run's (or bundle's) best weights for every row of
    `frame` (`load_for_prediction`, then `LoadedRun.predict`)."""
    loaded = load_for_prediction(
        run_dir, batch_size, devices, num_devices, precision, quantize, model_parallel
    )
    return loaded.predict(frame, tta)


def predict_progress(label: str, sizes: Sequence[int]):
    """A Keras callback reporting `model.predict`'s progress over `sizes[i]` real rows in batch i
    (a `monitoring.Ticker`: filler copies padding the last global batch are not counted)."""
    import keras

    ticker = Ticker(label, int(sum(sizes)))
    return keras.callbacks.LambdaCallback(
        on_predict_batch_end=lambda batch, logs: ticker.add(int(sizes[batch]))
    )
