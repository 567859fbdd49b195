"""Command-line entry points: train, infer, evaluate, cross-validate.

Training flags are generated from the `TrainConfig` fields (help, choices and defaults stated
once, in `jaxpref.config`). The JAX environment is set before heavy imports, and known failures
(bad data or flags, missing devices, unusable presets or run directories) end with one
`error: ...` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Collection, Sequence

from jaxpref import backbones, data, distribution
from jaxpref.config import GROUPS, ConfigError, DeviceConfig, TrainConfig, flag_name
from jaxpref.rundir import Preempted, ResumeError, RunDir, RunDirError

USER_ERRORS = (
    ConfigError,
    data.DataError,
    distribution.DeviceError,
    backbones.PresetError,
    RunDirError,
)
PREEMPTED_EXIT = 143  # 128 + SIGTERM: stopped on request, state saved, resumable
TYPES = {"int": int, "float": float, "str": str}


def add_field_flag(group, field: dataclasses.Field) -> None:
    """One flag for one config field, its help ending with the default, stated once."""
    meta = field.metadata
    shown = meta["shown"] if meta["shown"] is not None else field.default
    kind = str(field.type).split()[0]
    if kind == "bool":
        # default=None keeps BooleanOptionalAction from appending a second default.
        group.add_argument(
            flag_name(field), action=argparse.BooleanOptionalAction, default=None,
            help=f"{meta['help']} (default: {'on' if field.default else 'off'})",
        )  # fmt: skip
        group.set_defaults(**{field.name: field.default})
        return
    group.add_argument(
        flag_name(field), type=TYPES[kind], default=field.default, choices=meta["choices"],
        help=f"{meta['help']} (default: {shown})",
    )  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """A flag for every TrainConfig field not in `exclude`, grouped as the config is."""
    for name, kind in GROUPS.items():
        group = parser.add_argument_group(name, kind.__doc__)
        for field in dataclasses.fields(kind):
            if field.name not in exclude:
                add_field_flag(group, field)


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices", DeviceConfig.__doc__)
    for field in dataclasses.fields(DeviceConfig):
        add_field_flag(group, field)


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes/hosts",
        "Run the same command on every host. Without these flags, JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID or a launcher JAX detects (SLURM, Open MPI, Cloud "
        "TPU, GKE) are used; otherwise the run is one process.",
    )
    add = group.add_argument
    add("--coordinator-address", help="HOST:PORT of process 0, reachable from every host")
    add("--num-processes", type=int, help="total processes (default: one, or the launcher's)")
    add("--process-id", type=int, help="this process, 0..N-1 (default: the launcher's)")
    add(
        "--distributed-timeout", type=int, default=300,
        help="seconds to wait for the other processes to join (default: 300)",
    )  # fmt: skip
    add(
        "--heartbeat-timeout", type=int, default=100,
        help="seconds after which a silent process counts as dead and all exit (default: 100)",
    )  # fmt: skip


def add_trained_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="directory written by train_jax.py")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe, validated."""
    return TrainConfig.from_flat(vars(args)).validate()


def train_flags(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest state checkpoint, with its saved "
        "configuration and the same data order",
    )
    add_process_flags(p)


def infer_flags(p: argparse.ArgumentParser) -> None:
    add_trained_run_flag(p)
    p.add_argument(
        "--test-csv", default=str(data.DEFAULT_TEST_CSV),
        help="arena test CSV (default: the competition's real 3-row test.csv)",
    )  # fmt: skip
    p.add_argument(
        "--output", default="submission.csv", help="submission file (default: submission.csv)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="global batch size (default: the training batch, rounded to the devices)",
    )  # fmt: skip
    p.add_argument(
        "--tta",
        action="store_true",
        help="swap test-time augmentation: also predict each pair with A and B exchanged and "
        "average in the mirrored prediction (twice the compute)",
    )
    add_device_flags(p)
    add_process_flags(p)


def evaluate_flags(p: argparse.ArgumentParser) -> None:
    add_trained_run_flag(p)
    p.add_argument(
        "--csv",
        default=None,
        help="labelled arena CSV to predict with the model (default: the run's validation "
        "split and its valid_predictions.csv; no model is loaded)",
    )
    p.add_argument("--out-dir", default=None, help="report directory (default: RUN/evaluation)")
    add_device_flags(p)


def crossval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    add_config_flags(p, exclude=("valid_fraction", "group_by_prompt"))
    add_process_flags(p)


def initialize_processes(args: argparse.Namespace) -> None:
    distribution.initialize_processes(
        args.coordinator_address, args.num_processes, args.process_id,
        args.distributed_timeout, args.heartbeat_timeout,
    )  # fmt: skip


def leave_other_processes(code: int) -> None:
    """With several processes, exit at once: JAX's shutdown barrier would keep this process
    answering heartbeats while the others wait in a collective. Once it is gone, they stop
    within --heartbeat-timeout."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_count() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


def run_command(fn: Callable[[], None]) -> int:
    """Run `fn`, turning known user errors into one `error:` line and exit status 2."""
    try:
        fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        leave_other_processes(2)
        return 2
    except Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def resumed_config(args: argparse.Namespace) -> TrainConfig:
    """The saved config of the run in --run-dir, on this invocation's devices."""
    saved = RunDir(args.run_dir or "").config
    if not args.run_dir or not saved.exists():
        raise ResumeError(f"--resume needs --run-dir of an earlier run ({saved})")
    return TrainConfig.from_json(saved).replace(
        devices=args.devices, num_devices=args.num_devices, run_dir=args.run_dir
    )


def run_with_environment(
    args: argparse.Namespace, body: Callable[[argparse.Namespace], None]
) -> int:
    """Set the JAX environment before anything imports JAX, then run `body(args)`."""
    distribution.configure_environment(args.devices, args.num_devices)
    return run_command(lambda: body(args))


def train(args: argparse.Namespace) -> None:
    from jaxpref import training

    cfg = config_from_args(args)
    initialize_processes(args)
    training.train(resumed_config(args) if args.resume else cfg, resume=args.resume)


def infer(args: argparse.Namespace) -> None:
    from jaxpref import prediction

    initialize_processes(args)
    path = prediction.infer(
        args.run_dir, args.test_csv, args.output, args.batch_size, args.devices,
        args.num_devices, args.tta,
    )  # fmt: skip
    print(f"wrote {path}")


def evaluate(args: argparse.Namespace) -> None:
    """Score a run, print the table and where the report went."""
    from jaxpref import evaluation, report

    result = evaluation.evaluate_run(
        args.run_dir, args.csv, args.out_dir, args.devices, args.num_devices
    )
    print(report.markdown_table(result["scores"]))
    se = report.number(result["model_log_loss_se"])
    print(f"\n{result['rows']} rows; model log loss standard error {se}")
    print(f"wrote {args.out_dir or RunDir(result['run_dir']).evaluation}")


def cross_validate(args: argparse.Namespace) -> None:
    from jaxpref import crossval

    cfg = config_from_args(args)
    cfg = cfg.replace(run_dir=cfg.run.run_dir or f"runs/cv-{args.folds}fold")
    initialize_processes(args)
    crossval.cross_validate(cfg, args.folds)


@dataclasses.dataclass(frozen=True)
class Command:
    """One entry point: its script, description, flags and body."""

    script: str
    description: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS = {
    "train": Command(
        "train_jax.py",
        "Train a preference model (default: siamese LoRA DeBERTa-v3) on arena-format data with "
        "JAX data parallelism; keep the weights with the best validation log loss.",
        train_flags,
        train,
    ),
    "infer": Command(
        "infer.py",
        "Predict a test CSV with a trained run's best weights; write submission.csv.",
        infer_flags,
        infer,
    ),
    "evaluate": Command(
        "evaluate.py",
        "Score a trained run and simple baselines (fitted on the run's training split) on the "
        "same rows; write evaluation.json/.md and plots.",
        evaluate_flags,
        evaluate,
    ),
    "cv": Command(
        "cross_validate.py",
        "K-fold cross-validation grouped by prompt: train one run per fold under --run-dir and "
        "report out-of-fold log loss beside the baselines (cv.md, cv.json).",
        crossval_flags,
        cross_validate,
    ),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one entry point, as its script presents it."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(command.script, description=command.description)
    command.add_flags(parser)
    return parser


def train_parser() -> argparse.ArgumentParser:
    return command_parser("train")


def infer_parser() -> argparse.ArgumentParser:
    return command_parser("infer")


def evaluate_parser() -> argparse.ArgumentParser:
    return command_parser("evaluate")


def crossval_parser() -> argparse.ArgumentParser:
    return command_parser("cv")


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxpref COMMAND ...`: every entry point behind one console script."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("jaxpref")
    except PackageNotFoundError:
        installed = "unknown (not installed)"
    parser = argparse.ArgumentParser(
        "jaxpref",
        description="Train and use pairwise human-preference models on LMSYS Chatbot Arena "
        "format data (JAX + Keras, every accelerator and host).",
    )
    parser.add_argument("--version", action="version", version=f"jaxpref {installed}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.description, description=command.description)
        command.add_flags(sub)
    args = parser.parse_args(argv)
    return run_with_environment(args, COMMANDS[args.command].run)


def train_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(train_parser().parse_args(argv), train)


def infer_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(infer_parser().parse_args(argv), infer)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(evaluate_parser().parse_args(argv), evaluate)


def crossval_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(crossval_parser().parse_args(argv), cross_validate)
