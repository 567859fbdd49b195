"""Measure jaxpref's own path for one configuration in this process; print one JSON line.

Tokenize once -> length-bucketed batch plans -> tf.data -> siamese model (both sides in one
backbone call, masked mean pooling) on keras.distribution.DataParallel over JAX devices,
with jaxpref's defaults (LoRA rank 8, Adam 1e-4, float32 on CPU, bf16 on accelerators).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from benchlib import (
    emit,
    epoch_timer,
    fail,
    load_frame,
    median,
    model_flops,
    path_arguments,
    peak_flops,
    rates,
    timed,
)

from jaxpref import monitoring
from jaxpref.config import (
    ATTENTIONS,
    ModelConfig,
    OptimConfig,
    default_learning_rate,
    resolve_precision,
)
from jaxpref.data import text
from jaxpref.inputs import pipeline
from jaxpref.models import backbones, objective
from jaxpref.parallel import distribution


def parse_args(argv: list[str] | None = None):
    parser = path_arguments(__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu", choices=("cpu", "gpu", "tpu"))
    parser.add_argument("--num-devices", type=int, default=None, help="default: all")
    parser.add_argument("--lora-rank", type=int, default=ModelConfig.lora_rank)
    parser.add_argument("--attention", default=ModelConfig.attention, choices=ATTENTIONS)
    parser.add_argument("--pipeline", action="store_true", help="also time the input pipeline")
    parser.add_argument("--peak-flops", type=float, default=None, help="per device, FLOP/s")
    return parser.parse_args(argv)


def sample_plan(plan, batches: int) -> list[pipeline.Batch]:
    """`batches` evenly spaced batches of the length-sorted plan.

    A capped epoch with the same mix of padded lengths as the whole epoch (all of it when
    `batches` is at least the plan's length).
    """
    ordered = sorted(plan, key=lambda b: b.length)
    if batches >= len(ordered):
        return ordered
    return [ordered[i] for i in np.linspace(0, len(ordered) - 1, batches).round().astype(int)]


def epoch_plans(sample, epochs: int, seed: int) -> list[list[pipeline.Batch]]:
    """The sampled batches in a fresh order per epoch, each epoch opening with the same length.

    Keras re-creates the metric variables at every epoch start, and the JAX train step then
    compiles once more for that first batch's shape; opening every epoch with the same padded
    length keeps that to one compilation, done during the warm-up.
    """
    common = Counter(b.length for b in sample).most_common(1)[0][0]
    plans = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(sample))
        plan = [sample[i] for i in order]
        first = next(i for i, b in enumerate(plan) if b.length == common)
        plans.append([plan[first], *plan[:first], *plan[first + 1 :]])
    return plans


def warmup_plan(plan) -> list[pipeline.Batch]:
    """One batch of every padded length in `plan`, its first batch first and also second.

    The first step compiles for the freshly built variables, the later ones for the variables
    the train step returns; the first length needs both.
    """
    seen: dict[int, pipeline.Batch] = {}
    for batch in plan:
        seen.setdefault(batch.length, batch)
    return [plan[0], *seen.values()]


def real_rows(plan) -> np.ndarray:
    return np.concatenate([b.rows[b.weights > 0] for b in plan])


def side_efficiency(lengths: np.ndarray, plan) -> float:
    """Real / computed tokens of a plan over single sequences (one side per row)."""
    real = sum(int(lengths[b.rows[b.weights > 0]].sum()) for b in plan)
    return real / sum(len(b.rows) * b.length for b in plan)


def split_sides_plan(lengths: np.ndarray, batch_size: int, buckets, seed: int = 0) -> list:
    """(rows, short length, long length) batches of a layout jaxpref does not use.

    Each pair's shorter side would go into one (B, Ls) backbone call and its longer side into
    a (B, Ll) call, Ls and Ll each the bucket of their batch maximum; rows are grouped by
    (long bucket, short bucket). Every (Ls, Ll) combination is a shape to compile.
    """
    bks = np.asarray(buckets)
    short = np.searchsorted(bks, lengths.min(axis=1))
    long = np.searchsorted(bks, lengths.max(axis=1))
    tie = np.random.default_rng(seed).random(len(lengths))
    order = np.lexsort((tie, short, long))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [(c, int(bks[short[c].max()]), int(bks[long[c].max()])) for c in chunks]


def padding_analysis(tokens, batch_size: int, buckets, sequence_length: int) -> dict:
    """Padding efficiency and compiled shapes of other batch layouts on the same tokens.

    pair_bound: both sides of a row share one padded length (the longer side's), so even
    exact per-row padding cannot beat it. pair_*: jaxpref's layout (one (2B, T) call).
    split_sides_*: a pair's shorter and longer sides in two calls (`split_sides_plan`).
    unpaired_sides_*: the 2N sides bucketed independently, ignoring which pair they belong to:
    a bound no pairwise loss can use directly.
    """
    fine = (*range(32, sequence_length, 32), sequence_length)
    rows = tokens.row_lengths()
    sides = tokens.lengths.reshape(-1)

    def pairs(bks) -> dict:
        plan = pipeline.plan_batches(rows, batch_size, bks, True)
        return {
            "efficiency": pipeline.padding_efficiency(tokens, plan),
            "shapes": len({b.length for b in plan}),
        }

    def split(bks) -> dict:
        plan = split_sides_plan(tokens.lengths, batch_size, bks)
        computed = sum(batch_size * (ls + ll) for _, ls, ll in plan)
        return {
            "efficiency": float(tokens.lengths.sum() / computed),
            "shapes": len({(ls, ll) for _, ls, ll in plan}),
        }

    def unpaired(bks) -> dict:
        plan = pipeline.plan_batches(sides, 2 * batch_size, bks, True)
        return {"efficiency": side_efficiency(sides, plan), "shapes": len({b.length for b in plan})}

    return {
        "pair_bound": float(tokens.lengths.sum() / (2 * rows.sum())),
        "pair_buckets": pairs(buckets),
        "pair_buckets_every_32": pairs(fine),
        "split_sides_buckets": split(buckets),
        "split_sides_buckets_every_32": split(fine),
        "unpaired_sides_buckets": unpaired(buckets),
        "unpaired_sides_buckets_every_32": unpaired(fine),
    }


def computed_tokens(plan) -> int:
    return sum(2 * len(b.rows) * b.length for b in plan)


def time_pipeline(tokens, plans, keys, labels) -> dict:
    """Batches/s of make_dataset from tokens already in memory (no model)."""
    start = time.perf_counter()
    batches = sum(1 for _ in pipeline.make_dataset(tokens, plans, keys, labels))
    seconds = time.perf_counter() - start
    return {
        "batches": batches,
        "seconds": seconds,
        "batches_per_s": batches / seconds,
        "pairs_per_s": sum(len(b.rows) for plan in plans for b in plan) / seconds,
        "computed_tokens_per_s": sum(computed_tokens(p) for p in plans) / seconds,
    }


def build(args, precision: str):
    """The siamese model (concat head, no side features) compiled as jaxpref trains it."""
    from jaxpref.models import preference as model_lib

    cfg = ModelConfig(
        preset=args.preset, head="concat", side_features=False, lora_rank=args.lora_rank,
        precision=precision, attention=args.attention,
    )  # fmt: skip
    model = model_lib.build_model(cfg, args.sequence_length)
    rate = default_learning_rate(args.lora_rank)
    objective.compile_model(model, rate, OptimConfig().label_smoothing)
    return model.backbone, model


def fit(model, tokens, labels, plans, keys, epochs: int, callbacks=()) -> None:
    """model.fit over `plans`, one per epoch (tf.data input: Keras never reshuffles it)."""
    steps = len(plans[0])
    ds = pipeline.make_dataset(tokens, plans, keys, labels)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks), verbose=0)


def train(model, tokens, labels, plans, keys) -> dict:
    """Warm-up (one step of every shape, then a one-step epoch), then one timed epoch per plan.

    The one-step epoch compiles the variant Keras needs at each epoch start (fresh metric
    variables); the timed epochs then compile nothing (`timed_compiles` checks it).
    """
    warm = warmup_plan(plans[0])
    compiles = monitoring.compile_counter()
    start = time.perf_counter()
    fit(model, tokens, labels, [warm], keys, 1)
    fit(model, tokens, labels, [warm[:1]], keys, 1)
    warmup_s = time.perf_counter() - start
    warmup_compiles = compiles()
    times: list[float] = []
    cpu_times: list[float] = []
    fit(model, tokens, labels, plans, keys, len(plans), [epoch_timer(times, cpu_times)])
    return {
        "warmup_s": warmup_s,
        "warmup_steps": len(warm) + 1,
        "warmup_compiles": warmup_compiles,
        "timed_compiles": compiles(),
        "epoch_s": times,
        "epoch_cpu_s": cpu_times,
    }


def infer(model, tokens, batch_size: int, buckets, keys, repeats: int) -> dict:
    """predict_tokens over a length-sorted plan: one warm-up pass, then `repeats` timed ones.

    Swap test-time augmentation (a second pass with sides A and B exchanged) is timed once.
    """
    from jaxpref.serve import predict

    plan = pipeline.plan_batches(tokens.row_lengths(), batch_size, buckets)
    predict.predict_tokens(model, tokens, plan, keys)
    times, _ = timed(lambda: predict.predict_tokens(model, tokens, plan, keys), repeats)
    tta_s, _ = timed(lambda: predict.predict_tokens(model, tokens, plan, keys, tta=True), 1)
    result = {
        "seconds": times,
        "padding_efficiency": pipeline.padding_efficiency(tokens, plan),
        "swap_tta": {"seconds": tta_s[0], "pairs_per_s": len(tokens) / tta_s[0]},
    }
    real, computed = int(tokens.lengths.sum()), computed_tokens(plan)
    return result | rates(len(tokens), real, computed, median(times))


def setup_devices(args) -> tuple[list, str]:
    """Distribution first: it must exist before any Keras object (the preprocessor is one)."""
    distribution.configure_environment(args.devices, args.num_devices)
    try:
        devices = distribution.setup(args.devices, args.num_devices, args.batch_size)
    except distribution.DeviceError as err:
        fail(str(err))
    return devices, resolve_precision("auto", distribution.platform_of(devices))


def measure(args) -> dict:
    devices, precision = setup_devices(args)
    frame = load_frame()
    try:
        preprocessor = backbones.load_preprocessor(args.preset, args.sequence_length)
        backbone, model = build(args, precision)
    except backbones.PresetError as err:
        fail(str(err))
    keys = model.backbone_input_keys
    encoder = pipeline.PairEncoder(preprocessor, keys)
    texts = text.format_pairs(frame)
    tokenize_s, all_tokens = timed(lambda: pipeline.tokenize(texts, encoder, None, False), 1)
    buckets = pipeline.bucket_lengths(args.sequence_length)
    full_plan = pipeline.plan_batches(all_tokens.row_lengths(), args.batch_size, buckets, True)

    labels = frame["label"].to_numpy()
    sample = sample_plan(full_plan, -(-args.rows // args.batch_size))
    plans = epoch_plans(sample, args.epochs, args.seed)
    rows = real_rows(sample)
    result = {
        "path": "jaxpref",
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "precision": precision,
        "lora_rank": args.lora_rank,
        "backbone": type(backbone).__name__,
        "backbone_config": {k: v for k, v in backbone.get_config().items() if k != "dtype"},
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "rows_total": len(frame),
        "mean_real_tokens_per_side": float(all_tokens.lengths.mean()),
        "padding_efficiency": pipeline.padding_efficiency(all_tokens, full_plan),
        "buckets": list(buckets),
        "padding_analysis": padding_analysis(
            all_tokens, args.batch_size, buckets, args.sequence_length
        ),
        "tokenize": {
            "cache": "off",
            "seconds": tokenize_s[0],
            "pairs_per_s": len(frame) / tokenize_s[0],
            "real_tokens_per_s": int(all_tokens.lengths.sum()) / tokenize_s[0],
        },
    }
    if args.pipeline:
        result["make_dataset"] = time_pipeline(all_tokens, plans, keys, labels)

    timing = train(model, all_tokens, labels, plans, keys)
    epoch_s = median(timing["epoch_s"])
    lengths = [b.length for b in sample for _ in range(2 * len(b.rows))]
    result["train"] = timing | {
        "rows_per_epoch": len(rows),
        "steps_per_epoch": len(sample),
        "median_epoch_s": epoch_s,
        "padding_efficiency": pipeline.padding_efficiency(all_tokens, sample),
        "model_flops_per_s": model_flops(backbone, lengths) / epoch_s,
    }
    real = int(all_tokens.lengths[rows].sum())
    result["train"] |= rates(len(rows), real, computed_tokens(sample), epoch_s)
    peak = args.peak_flops or peak_flops(devices[0].device_kind)
    if peak and devices[0].platform != "cpu":
        result["train"]["peak_flops"] = peak * len(devices)
        result["train"]["mfu"] = result["train"]["model_flops_per_s"] / (peak * len(devices))
    if args.infer_repeats:
        tokens = all_tokens.take(rows)
        result["infer"] = infer(model, tokens, args.batch_size, buckets, keys, args.infer_repeats)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    emit(measure(args) | {"args": vars(args)})


if __name__ == "__main__":
    main()
