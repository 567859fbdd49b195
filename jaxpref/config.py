"""Run configuration as plain data: one dataclass, saved as JSON in the run directory."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

DEFAULT_PRESET = "deberta_v3_small_en"

# Run-directory layout shared by training and inference.
BEST_CHECKPOINT_DIR = "checkpoints/best"
PRESET_DIR = "preset"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; None fields are chosen automatically (CLI, training).

    The modelling defaults (symmetric head, swap augmentation, side features, cosine schedule,
    LoRA learning rate) are the best configuration of the cross-validation in docs/quality.md.
    """

    preset: str = DEFAULT_PRESET
    train_csv: str = ""
    extra_train: str = ""
    run_dir: str = ""
    devices: str = "auto"
    num_devices: int | None = None
    epochs: int = 2
    batch_size: int = 8
    sequence_length: int = 1024
    learning_rate: float | None = None
    schedule: str = "cosine"
    warmup_fraction: float = 0.1
    lora_rank: int = 8
    valid_fraction: float = 0.1
    group_by_prompt: bool = False
    seed: int = 42
    precision: str = "auto"
    label_smoothing: float = 0.02
    dropout: float = 0.1
    head: str = "symmetric"
    swap_augment: bool = True
    side_features: bool = True
    save_every: int | None = None
    calibrate: bool = True

    def default_learning_rate(self) -> float:
        """LoRA adapters want a much larger step than full fine-tuning (docs/quality.md)."""
        return 2e-3 if self.lora_rank > 0 else 1e-5

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_precision(precision: str, platform: str) -> str:
    """bf16 on accelerators, float32 on CPU, unless the user chose."""
    if precision != "auto":
        return precision
    return "float32" if platform == "cpu" else "mixed_bfloat16"
