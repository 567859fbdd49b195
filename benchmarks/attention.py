"""Train-step time of DeBERTa-v3-small: keras-hub's disentangled attention against jaxpref's.

One jitted step (forward + backward over every trainable weight, float32, dropout on as in
keras-hub's config; `--lora-rank R` trains the LoRA adapters only) of the deberta_v3_small
architecture with random weights (no download). Each implementation is compiled once on the
same backbone (switched in place with `efficient_deberta` between compilations), then their
steps alternate so all see the same machine load. Prints a table and writes JSON.

    python benchmarks/attention.py --out benchmarks/results/attention.json    # ~15 min on 2 CPUs
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

from benchlib import ARCHS, REAL_VOCAB, Report, median, parse_args, parser, progress  # noqa: E402

# keras-hub's deberta_v3_small_en: 6 layers, hidden 768, 12 heads, FFN 3072.
SMALL = {"vocabulary_size": REAL_VOCAB, **ARCHS["small"], "max_sequence_length": 512}
SMALL["bucket_size"] = 256
IMPLS = ("keras_hub", "efficient", "efficient_dropout")


def compile_step(backbone, batch: int, length: int):
    """The compiled train step of `backbone` as it is now, and its arguments."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": jnp.asarray(rng.integers(0, SMALL["vocabulary_size"], (batch, length))),
        "padding_mask": jnp.ones((batch, length), "int32"),
    }
    trainable = [v.value for v in backbone.trainable_variables]
    non_trainable = [v.value for v in backbone.non_trainable_variables]

    def loss(trainable, non_trainable, inputs):
        hidden, non_trainable = backbone.stateless_call(
            trainable, non_trainable, inputs, training=True
        )
        return jnp.mean(jnp.square(hidden)), non_trainable

    def step(trainable, non_trainable, inputs):
        return jax.value_and_grad(loss, has_aux=True)(trainable, non_trainable, inputs)

    args = (trainable, non_trainable, inputs)
    return jax.jit(step).lower(*args).compile(), args


def measure_case(batch: int, length: int, impls: list[str], opts) -> dict:
    """Compile every implementation on one backbone, then time their steps alternately."""
    import jax
    import keras_hub

    from jaxpref.models.deberta_attention import efficient_deberta

    backbone = keras_hub.models.DebertaV3Backbone(**{**SMALL, "num_layers": opts.num_layers})
    if opts.lora_rank:
        backbone.enable_lora(opts.lora_rank)
    compiled = {}
    for impl in impls:  # keras_hub first: the switch to the efficient attention is one-way
        if impl != "keras_hub":
            efficient_deberta(backbone, attention_dropout=impl == "efficient_dropout")
        start = time.perf_counter()
        compiled[impl] = compile_step(backbone, batch, length)
        jax.block_until_ready(compiled[impl][0](*compiled[impl][1]))  # warm-up
        progress(f"{batch}x{length} {impl}: compiled in {time.perf_counter() - start:.0f} s")
    times = {impl: {"wall_s": [], "cpu_s": []} for impl in impls}
    for _ in range(opts.steps):
        for impl in impls:
            fn, args = compiled[impl]
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            times[impl]["wall_s"].append(time.perf_counter() - wall)
            times[impl]["cpu_s"].append(time.process_time() - cpu)
    for entry in times.values():
        entry["median_wall_s"] = median(entry["wall_s"])
        entry["median_cpu_s"] = median(entry["cpu_s"])
    return {"batch": batch, "length": length, **times}


def table_rows(cases: list[dict], impls: list[str]) -> list[dict]:
    """Median step wall and CPU seconds; speed-ups over the first implementation."""
    rows = []
    for case in cases:
        base = case[impls[0]]
        for impl in impls:
            wall, cpu = case[impl]["median_wall_s"], case[impl]["median_cpu_s"]
            rows.append(
                {
                    "batch x tokens": f"{case['batch']} x {case['length']}",
                    "attention": impl,
                    "step s": wall,
                    "CPU s": cpu,
                    "speed-up": f"{base['median_wall_s'] / wall:.2f}x",
                    "per CPU-s": f"{base['median_cpu_s'] / cpu:.2f}x",
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parsed = parser(__doc__)
    parsed.add_argument("--cases", nargs="+", default=["2x1024", "4x512"], help="BATCHxLENGTH")
    parsed.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS[:2]))
    parsed.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parsed.add_argument("--num-layers", type=int, default=SMALL["num_layers"])
    parsed.add_argument("--lora-rank", type=int, default=0, help="0: every weight trains")
    opts = parse_args(parsed, argv)
    report = Report("attention", opts.out, argv)
    cases = []
    for spec in opts.cases:
        batch, length = (int(part) for part in spec.split("x"))
        cases.append(measure_case(batch, length, opts.impls, opts))
    config = SMALL | {"num_layers": opts.num_layers, "lora_rank": opts.lora_rank}
    details = {"config": config | {"dtype": "float32"}, "cases": cases}
    report.finish(table_rows(cases, opts.impls), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
