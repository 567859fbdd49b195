"""Command-line entry points: train, infer, evaluate, cross-validate, ensemble, export, env.

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
from pathlib import Path

from jaxpref import api, monitoring, rundir
from jaxpref.config import (
    GROUPS,
    INFERENCE_PRECISIONS,
    QUANTIZE_MODES,
    ConfigError,
    DeviceConfig,
    TrainConfig,
    alias_flags,
    flag_name,
)
from jaxpref.data import arena, sources
from jaxpref.models import families, presets
from jaxpref.parallel import distribution, sharding
from jaxpref.rundir import (
    Diverged,
    Preempted,
    RunDir,
    RunDirError,
    writable_directory,
)
from jaxpref.serve import bundle

USER_ERRORS = (
    ConfigError,
    families.FamilyError,
    sharding.ShardingError,
    arena.DataError,
    distribution.DeviceError,
    presets.PresetError,
    RunDirError,
    Diverged,
)
PREEMPTED_EXIT = 143  # 128 + SIGTERM: stopped on request, state saved, resumable
TYPES = {"int": int, "float": float, "str": str}


def add_field_flag(group, field: dataclasses.Field, given_only: bool = False) -> None:
    """One flag for one config field, its help ending with the default, stated once.

    With `given_only` the flag sets its attribute only when it is on the command line, so
    flags can override a config file (and `--resume` can tell which were given).
    """
    meta = field.metadata
    kind = str(field.type).split()[0]
    default = argparse.SUPPRESS if given_only else field.default
    aliases = alias_flags(field)
    earlier = f"; {', '.join(aliases)}: its earlier name" if aliases else ""
    if kind == "bool":
        shown = meta["shown"] or ("on" if field.default else "off")
        # A default of SUPPRESS keeps BooleanOptionalAction from appending a second default.
        group.add_argument(
            flag_name(field), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
            help=f"{meta['help']} (default: {shown})",
        )  # fmt: skip
        if not given_only:
            group.set_defaults(**{field.name: field.default})
        return
    shown = meta["shown"] if meta["shown"] is not None else field.default
    group.add_argument(
        flag_name(field), *aliases, dest=field.name, type=TYPES[kind], default=default,
        choices=meta["choices"], help=f"{meta['help']} (default: {shown}{earlier})",
    )  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """`--config FILE` and a flag for every TrainConfig field not in `exclude`, grouped as the
    config is; flags override the file, the file overrides the defaults."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML or JSON file (a run's config.json too), nested in the groups "
        "below or flat; flags override it",
    )
    for name, kind in GROUPS.items():
        group = parser.add_argument_group(name, kind.__doc__)
        for field in dataclasses.fields(kind):
            if field.name not in exclude:
                add_field_flag(group, field, given_only=True)


def add_device_flags(parser: argparse.ArgumentParser, runs_parallel: bool = False) -> None:
    """The DeviceConfig flags; with `runs_parallel`, --model-parallel defaults to the run's."""
    group = parser.add_argument_group("devices", DeviceConfig.__doc__)
    for field in dataclasses.fields(DeviceConfig):
        if runs_parallel and field.name == "model_parallel":
            group.add_argument(
                flag_name(field), type=int, default=None,
                help=f"{field.metadata['help']} (default: the run's own, 1 for a bundle)",
            )  # fmt: skip
        else:
            add_field_flag(group, field)


def env_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("devices", DeviceConfig.__doc__)
    for field in dataclasses.fields(DeviceConfig):
        if field.name in ("devices", "num_devices"):
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


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show debug lines and the start-up output of TensorFlow, absl and CUDA",
    )


def add_trained_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="directory written by `jaxpref train`")


def given_settings(args: argparse.Namespace) -> dict:
    """The config fields set on the command line."""
    names = {field.name for field, _, _ in TrainConfig().fields()}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then `--config FILE`, then the flags given; validated."""
    base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    return base.replace(**given_settings(args)).validate()


def train_flags(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest state checkpoint, with its saved "
        "configuration and the same data order",
    )
    add_process_flags(p)


def add_run_dirs_flag(parser: argparse.ArgumentParser, bundles: str, several: str) -> None:
    """--run-dir taking several runs; a cross-validation's directory stands for its folds."""
    parser.add_argument(
        "--run-dir", required=True, nargs="+", metavar="RUN_DIR",
        help=f"directory written by `jaxpref train`{bundles}; with several, or a `jaxpref cv` "
        f"directory (its fold runs), {several}",
    )  # fmt: skip


def infer_flags(p: argparse.ArgumentParser) -> None:
    add_run_dirs_flag(
        p,
        " (or a `jaxpref export` bundle)",
        "the submission is the mean of their calibrated predictions",
    )
    p.add_argument(
        "--test-file", "--test-csv", dest="test_file", default=str(arena.DEFAULT_TEST_CSV),
        help="rows to predict: an arena test CSV, or any --train-file kind, its labels unused "
        "(default: the competition's real 3-row test.csv; --test-csv: its earlier name)",
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
    p.add_argument(
        "--precision", default="auto", choices=INFERENCE_PRECISIONS,
        help="dtype policy of the prediction; auto: the run's own on GPU/TPU, float32 on CPU; "
        "float16 keeps the weights in float16 (T4, P100) (default: auto)",
    )  # fmt: skip
    p.add_argument(
        "--quantize", default=None, choices=QUANTIZE_MODES,
        help="int8: merge the LoRA factors and quantize the backbone's kernels and embeddings "
        "to int8 once loaded (Keras' own quantize, weight-only: half the bytes of bfloat16); "
        "needs a bfloat16 or float32 precision (default: off)",
    )  # fmt: skip
    add_device_flags(p, runs_parallel=True)
    add_process_flags(p)


EXPORT_FORMATS = ("bundle", "transformers")


def export_flags(p: argparse.ArgumentParser) -> None:
    add_run_dirs_flag(
        p, "", "the bundle's weights are their mean (LoRA merged first; no calibration)"
    )
    p.add_argument(
        "--out", required=True,
        help="directory to write: a bundle (an earlier bundle there is replaced), or a new or "
        "empty directory for --format transformers",
    )  # fmt: skip
    p.add_argument(
        "--format", default="bundle", choices=EXPORT_FORMATS,
        help="bundle: jaxpref's inference bundle; transformers: a reward model (--objective "
        "reward) as the directory transformers' AutoModelForSequenceClassification and "
        "AutoTokenizer load, one run only (default: bundle)",
    )  # fmt: skip
    add_device_flags(p)


def evaluate_flags(p: argparse.ArgumentParser) -> None:
    add_trained_run_flag(p)
    p.add_argument(
        "--file", "--csv", dest="file", default=None,
        help="labelled rows to predict with the model, of any --train-file kind (default: the "
        "run's validation rows and its valid_predictions.csv; no model is loaded; --csv: its "
        "earlier name)",
    )  # fmt: skip
    p.add_argument("--out-dir", default=None, help="report directory (default: RUN/evaluation)")
    add_device_flags(p)


def crossval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    p.add_argument(
        "--train-fraction", type=float, default=1.0,
        help="train each fold on this seeded fraction of its training rows, scored on all its "
        "validation rows (a learning curve on paired rows) (default: 1.0)",
    )  # fmt: skip
    add_config_flags(p, exclude=("valid_file", "valid_fraction", "group_by_prompt"))
    add_process_flags(p)


def ensemble_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "predictions", nargs="+", metavar="OOF_CSV",
        help="out-of-fold predictions of each model (id, winner_model_a, winner_model_b, "
        "winner_tie for every row of --train-csv), e.g. `jaxpref cv`'s oof.csv",
    )  # fmt: skip
    p.add_argument(
        "--train-csv", default=str(arena.DEFAULT_TRAIN_CSV),
        help="the labelled rows the predictions cover, of any `jaxpref train --train-file` "
        "kind (default: the embedded sample)",
    )  # fmt: skip
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also blend the length and TF-IDF baselines, refitted per grouped fold",
    )
    p.add_argument(
        "--folds", type=int, default=5,
        help="grouped folds of the nested score (and of --baselines) (default: 5)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=42, help="fold assignment seed (default: 42)")
    p.add_argument(
        "--test-predictions", nargs="+", default=[], metavar="CSV",
        help="each model's test submission, in the order of OOF_CSV: write the blended one",
    )  # fmt: skip
    p.add_argument("--test-csv", help="the test rows, for --baselines with --test-predictions")
    p.add_argument(
        "--out-dir", default="ensemble",
        help="where blend.json and submission.csv go (default: ensemble)",
    )  # fmt: skip


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
    # is_initialized, not process_count(): that would retry a backend that just failed.
    if jax is not None and jax.distributed.is_initialized():
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


def run_with_environment(args: argparse.Namespace, name: str) -> int:
    """Run command `name`: resolve the settings, check the paths it needs (before the
    frameworks load, so a wrong path fails in about a second), set the JAX environment before
    anything imports JAX and load the frameworks quietly (commands that need them), then run
    its body; training commands find their TrainConfig in `args.train_config`."""
    command = COMMANDS[name]
    if args.verbose:
        os.environ["JAXPREF_VERBOSE"] = "1"
    monitoring.setup_logging()

    def go():
        devices = args
        if "config" in vars(args):
            args.train_config = config_from_args(args)
            devices = args.train_config.devices
        if command.check is not None:
            command.check(args)
        if command.frameworks:
            distribution.start_frameworks(devices.devices, devices.num_devices)
        command.run(args)

    return run_command(go)


def check_train(args: argparse.Namespace) -> None:
    """What a training can be refused for without a framework: nothing to resume, a run
    directory that cannot be written, a preset path that is no preset, no wandb package."""
    if args.resume:  # the settings given by --config and flags must match the saved ones
        given = TrainConfig.from_file(args.config).flat() if args.config else {}
        given.update(given_settings(args))
        args.train_config = api.resumed_config(args.train_config, given)
    api.check_training(args.train_config)


def train(args: argparse.Namespace) -> None:
    from jaxpref.training import trainer

    initialize_processes(args)
    trainer.train(args.train_config, resume=args.resume)


def check_trained_runs(args: argparse.Namespace) -> None:
    for run in rundir.expand_runs(args.run_dir):
        rundir.require_trained(run)


def check_infer(args: argparse.Namespace) -> None:
    check_trained_runs(args)
    sources.source_kind(args.test_file)
    writable_directory(Path(args.output).absolute().parent, "the output directory")


def check_export(args: argparse.Namespace) -> None:
    if args.format == "transformers":
        if len(rundir.expand_runs(args.run_dir)) > 1:
            raise ConfigError(
                "--format transformers exports one run, not the mean of several: pass one run "
                "directory (one fold of a cross-validation)"
            )
        rundir.new_directory(args.out, "--out")
    else:
        bundle.check_target(args.out)
    check_trained_runs(args)


def check_evaluate(args: argparse.Namespace) -> None:
    if not args.file:  # the run's own predictions: no model is loaded
        RunDir.require(RunDir(args.run_dir).config)
        return
    rundir.require_trained(args.run_dir)
    sources.source_kind(args.file)


def infer(args: argparse.Namespace) -> None:
    from jaxpref.jobs import infer as infer_job

    initialize_processes(args)
    path = infer_job.infer(
        args.run_dir, args.test_file, args.output, args.batch_size, args.devices,
        args.num_devices, args.tta, args.precision, args.quantize, args.model_parallel,
    )  # fmt: skip
    print(f"wrote {path}")


def export_bundle(args: argparse.Namespace) -> None:
    """Write the bundle (of one run, or the mean of several) and print its size beside the
    run directories'."""
    from jaxpref.jobs import export

    if args.format == "transformers":
        run = rundir.expand_runs(args.run_dir)[0]  # one run: check_export refuses several
        result = export.export_transformers(run, args.out, args.devices, args.num_devices)
        print(f"wrote {result.path} (transformers AutoModelForSequenceClassification)")
        mib = (result.bundle_bytes / 2**20, result.run_bytes / 2**20)
        print(f"export {mib[0]:.2f} MiB; run directory {mib[1]:.2f} MiB")
        return
    result = export.export_runs(args.run_dir, args.out, args.devices, args.num_devices)
    sources = "run directory" if result.runs == 1 else f"{result.runs} run directories"
    print(f"wrote {result.path}" + (f" (the mean of {sources})" if result.runs > 1 else ""))
    mib = (result.bundle_bytes / 2**20, result.run_bytes / 2**20)
    print(f"bundle {mib[0]:.2f} MiB; {sources} {mib[1]:.2f} MiB")


def evaluate(args: argparse.Namespace) -> None:
    """Score a run, print the table and where the report went."""
    from jaxpref.jobs import evaluate
    from jaxpref.scoring import report

    result = evaluate.evaluate_run(
        args.run_dir, args.file, args.out_dir, args.devices, args.num_devices
    )
    print(report.markdown_table(result["scores"]))
    se = report.number(result["model_log_loss_se"])
    print(f"\n{result['rows']} rows; model log loss standard error {se}")
    if result["selected_on_these_rows"]:
        print(report.SELECTED_ON_THESE_ROWS.replace("**", ""))
    print(f"wrote {args.out_dir or RunDir(result['run_dir']).evaluation}")


def cross_validate(args: argparse.Namespace) -> None:
    from jaxpref.jobs import crossval

    cfg = args.train_config
    cfg = cfg.replace(run_dir=cfg.run.run_dir or f"runs/cv-{args.folds}fold")
    initialize_processes(args)
    crossval.cross_validate(cfg, args.folds, args.train_fraction)


def ensemble(args: argparse.Namespace) -> None:
    """Fit the blend, print its nested score against the best single model."""
    from jaxpref.jobs import ensemble as blending

    result = blending.run_ensemble(
        args.predictions, args.train_csv, args.out_dir, args.folds, args.seed, args.baselines,
        args.test_predictions, args.test_csv,
    )  # fmt: skip
    print(blending.summary(result))
    print(f"wrote {os.path.join(args.out_dir, blending.BLEND_FILE)}")
    if "submission" in result:
        print(f"wrote {result['submission']}")


def print_environment(args: argparse.Namespace) -> None:
    """The record a bug report needs (the same as a run's env.json), as JSON."""
    import json

    import jax

    print(json.dumps(monitoring.environment_record(jax.devices()), indent=2))


@dataclasses.dataclass(frozen=True)
class Command:
    """One entry point: its script, description, flags and body."""

    script: str
    description: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    frameworks: bool = True  # False: runs on numpy/scikit-learn alone, no JAX environment
    check: Callable[[argparse.Namespace], None] | None = None  # before the frameworks load


COMMANDS = {
    "train": Command(
        "train_jax.py",
        "Train a preference model (default: siamese LoRA DeBERTa-v3) on arena-format data with "
        "JAX data parallelism; keep the weights with the best validation log loss.",
        train_flags,
        train,
        check=check_train,
    ),
    "infer": Command(
        "infer.py",
        "Predict a test CSV (or another file of rows) with a trained run's best weights; "
        "write submission.csv.",
        infer_flags,
        infer,
        check=check_infer,
    ),
    "evaluate": Command(
        "evaluate.py",
        "Score a trained run and simple baselines (fitted on the run's training split) on the "
        "same rows; write evaluation.json/.md and plots.",
        evaluate_flags,
        evaluate,
        check=check_evaluate,
    ),
    "cv": Command(
        "cross_validate.py",
        "K-fold cross-validation grouped by prompt: train one run per fold under --run-dir and "
        "report out-of-fold log loss beside the baselines (cv.md, cv.json).",
        crossval_flags,
        cross_validate,
    ),
    "ensemble": Command(
        "ensemble.py",
        "Blend models' out-of-fold predictions log-linearly, weights fitted for least log "
        "loss; report the nested out-of-fold score against the best single model (blend.json) "
        "and blend their test predictions.",
        ensemble_flags,
        ensemble,
        frameworks=False,
    ),
    "export": Command(
        "export.py",
        "Write a self-contained inference bundle of a trained run: a keras-hub backbone preset "
        "with the LoRA adapters merged, the head weights, calibration and config; no optimizer "
        "state. `jaxpref infer --run-dir BUNDLE` predicts from it. Several runs (a "
        "cross-validation's folds) make one bundle of their averaged weights.",
        export_flags,
        export_bundle,
        check=check_export,
    ),
    "env": Command(
        "jaxpref env",
        "Print what a bug report needs: jaxpref, Python and library versions, devices, "
        "processes, git commit, environment variables.",
        env_flags,
        print_environment,
    ),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one entry point, as its script presents it."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(command.script, description=command.description)
    command.add_flags(parser)
    add_verbose_flag(parser)
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
        add_verbose_flag(sub)
    args = parser.parse_args(argv)
    return run_with_environment(args, args.command)


def train_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(train_parser().parse_args(argv), "train")


def infer_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(infer_parser().parse_args(argv), "infer")


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(evaluate_parser().parse_args(argv), "evaluate")


def crossval_main(argv: Sequence[str] | None = None) -> int:
    return run_with_environment(crossval_parser().parse_args(argv), "cv")
