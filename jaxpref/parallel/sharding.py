"""Tensor parallelism for decoder LLMs: a (batch x model) mesh, its layout map, a memory estimate.

Kernels are split Megatron-style on the "model" axis: q/k/v and the gate/up MLP kernels on
their output (heads, MLP width), the attention-output and down kernels on their input, the
embedding table on its vocabulary. A dimension the axis does not divide stays whole, so with
fewer kv heads than the model axis (Gemma-2B has one) the k/v kernels are replicated. LoRA
factors and norms are replicated: every rule is an exact path, never matching `lora_kernel_*`.
Weights are replicated along "batch"; each batch row group sees its own slice of the data.

keras-hub's own `get_layout_map` is not used: the Llama/Qwen ones put the q/k/v contraction
(hidden) dimension on "model" and heads on "batch", none checks divisibility (they fail on
Gemma-2B's single kv head), and Qwen-3 has none.

The distribution must be set (`keras.distribution.set_distribution` or its `scope()`) before
the backbone is built. keras #21634 reported whole weights built on one device by from_preset;
keras 3.15 / keras-hub 0.32 read otherwise: each variable gets its layout when created (random
values of 250 MiB / devices or more, as float32, come sharded from a jitted initializer,
smaller ones are made whole on device 0 and then split), and preset or Hugging Face weights are
assigned one variable at a time, each passing whole through device 0 (`Variable.assign` makes
a jax array before distributing it). Device 0 thus peaks at its shards plus the largest single
variable, e.g. 1.05 GB for Llama-3-8B's bf16 embedding table; no device holds the whole model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from jaxpref.models.families import (
    Family,
    Weight,
    family_of,
)

MESH_AXES = ("batch", "model")
GIB = 1024**3


class ShardingError(ValueError):
    """A mesh, batch or memory budget that cannot work."""


def mesh_shape(num_devices: int, model_parallel: int) -> tuple[int, int]:
    """(batch, model) axis sizes; refuses a model axis that does not divide the devices."""
    if model_parallel < 1 or num_devices % model_parallel:
        choices = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
        raise ShardingError(
            f"--model-parallel {model_parallel} does not divide the {num_devices} devices; "
            f"use one of {', '.join(map(str, choices))}"
        )
    return num_devices // model_parallel, model_parallel


def weight_spec(weight: Weight, model: int) -> tuple[str | None, ...] | None:
    """The weight's layout on a model axis of size `model`; None means replicated."""
    for dim in weight.shard_dims:
        if weight.shape[dim] % model == 0:
            return tuple("model" if i == dim else None for i in range(len(weight.shape)))
    return None


def path_regex(weight: Weight) -> str:
    """An exact-path regex for the weight in every block (LayoutMap uses re.fullmatch)."""
    return re.escape(weight.path).replace(re.escape("{i}"), r"\d+")


def layout_map(backbone_config: Mapping, mesh):
    """A `keras.distribution.LayoutMap` for the backbone described by `backbone_config`."""
    import keras

    family = family_of(backbone_config)
    model = mesh.shape[mesh.axis_names.index("model")]
    layouts = keras.distribution.LayoutMap(mesh)
    for weight in family.weights(backbone_config["config"]):
        spec = weight_spec(weight, model)
        if spec is not None:
            layouts[path_regex(weight)] = spec
    return layouts


def model_parallel(devices: list, model_parallel: int, backbone_config: Mapping):
    """A `ModelParallel` distribution over a (batch x model) mesh of `devices`.

    Set it with `keras.distribution.set_distribution` before building the backbone. As with
    jaxpref's data parallelism, each process feeds its own rows (`auto_shard_dataset=False`).
    """
    import keras

    shape = mesh_shape(len(devices), model_parallel)
    mesh = keras.distribution.DeviceMesh(shape, MESH_AXES, devices)
    return keras.distribution.ModelParallel(
        layout_map=layout_map(backbone_config, mesh),
        batch_dim_name="batch",
        auto_shard_dataset=False,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device holds while training: frozen weights, LoRA state, activations."""

    weights: int
    lora: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.2f} GiB per device (weights {self.weights / GIB:.2f}, "
            f"LoRA + Adam {self.lora / GIB:.2f}, activations {self.activations / GIB:.2f})"
        )


def itemsize(dtype: str) -> int:
    import jax.numpy as jnp

    return jnp.dtype(dtype).itemsize


def elements_per_device(weight: Weight, layers: int, model: int) -> int:
    """Elements of `weight`, in every block, that one device of a model axis `model` holds."""
    count = math.prod(weight.shape) * len(weight.paths(layers))
    return count // (model if weight_spec(weight, model) else 1)


def weight_bytes(family: Family, config: Mapping, dtype: str, model: int) -> int:
    """Bytes of the backbone's variables on one device of a model axis of size `model`."""
    layers = family.dims(config)["layers"]
    total = sum(elements_per_device(w, layers, model) for w in family.weights(config))
    return total * itemsize(dtype)


def trained_bias_elements(family: Family, config: Mapping, targets: list[str], model: int) -> int:
    """Elements on one device of the biases of the LoRA target layers (Qwen-2's q/k/v): LoRA
    freezes only the kernel, so these train too, sharded like their kernels."""
    layers = family.dims(config)["layers"]
    return sum(
        elements_per_device(w, layers, model)
        for w in family.weights(config)
        if w.path.endswith("/bias") and w.path.split("/")[-2] in targets
    )


def lora_parameters(family: Family, config: Mapping, rank: int, targets: list[str]) -> int:
    """LoRA parameters of every target kernel in every block.

    Keras factors a kernel of shape (*in, out) as A (*in, rank) @ B (rank, out): for the 3-D
    q/k/v kernels (hidden, heads, head_dim) A is hidden x heads x rank, far more than the
    hidden x rank of a Hugging Face PEFT adapter of the same rank.
    """
    kernels = {
        w.path.split("/")[-2]: w.shape for w in family.weights(config) if w.path.endswith("/kernel")
    }
    per_block = sum(rank * (math.prod(kernels[n][:-1]) + kernels[n][-1]) for n in targets)
    return per_block * family.dims(config)["layers"]


def activation_bytes(
    family: Family,
    config: Mapping,
    rows: int,
    sequence_length: int,
    compute_dtype: str,
    model: int,
    remat: bool,
    fused_attention: bool = False,
) -> int:
    """Activations kept for the backward pass on one device (see `memory_estimate`)."""
    d = family.dims(config)

    def split(size: int, divides: int) -> float:
        return size / model if divides % model == 0 else size

    width = 8 * d["hidden"] + split(6 * d["heads"] * d["head_dim"], d["heads"])
    width += split(4 * d["kv_heads"] * d["head_dim"], d["kv_heads"]) + split(4 * d["mlp"], d["mlp"])
    scores = 0 if fused_attention else split(3 * d["heads"] * sequence_length, d["heads"])
    block = rows * sequence_length * (width * itemsize(compute_dtype) + 4 * scores)
    if remat:
        inputs = rows * sequence_length * d["hidden"] * itemsize(compute_dtype)
        return int(d["layers"] * inputs + block)
    return int(d["layers"] * block)


def memory_estimate(
    backbone_config: Mapping,
    batch_size: int,
    sequence_length: int,
    lora_rank: int,
    lora_targets: list[str],
    dtype: str | None = None,
    mesh: tuple[int, int] = (1, 1),
    remat: bool = False,
    fused_attention: bool = False,
    sequences_per_row: int = 1,
) -> MemoryEstimate:
    """Per-device training memory of a LoRA'd decoder on a (batch, model) mesh.

    weights     = sum over variables of size x itemsize(variable dtype), divided by the model
                  axis for the ones `layout_map` shards (exactly what each device stores).
    lora        = 4 x 4 bytes x (`lora_parameters`, replicated, + `trained_bias_elements`):
                  float32 values, gradients, Adam m and v of what trains.
    activations = L x b x s x [c x (8H + (6 n_q + 4 n_kv) d_head / m + 4F / m) + 4 x 3 n_q s / m]
                  with b = batch / batch axis x `sequences_per_row` (2 for a siamese model,
                  which reads each side of a row apart), s = sequence length, c = compute itemsize,
                  F = MLP width, m = model axis (a term stays whole when m does not divide its
                  heads or width): norm inputs/outputs and residuals; q, k, v, their rotations,
                  kv repeated to the query heads and the attention context; gate, up and their
                  product; and three float32 s x s score tensors per head (logits, masked
                  logits, probabilities). `fused_attention` leaves those out: keras-hub calls a
                  flash kernel on GPUs that have one, for bf16/fp16 without soft-capping.
                  The coefficients match XLA's buffer assignment for the LoRA gradient on CPU
                  (float32): Llama-3 blocks within 1%, Gemma and Qwen-3 within 10%.
                  With `remat` only block inputs are kept, L x b x s x H x c, plus one block's
                  activations while it is recomputed.
    XLA workspace, the embedding gather and the classification head are not counted.
    """
    import keras

    family = family_of(backbone_config)
    config = backbone_config["config"]
    data, model = mesh
    if batch_size % data:
        raise ShardingError(
            f"--batch-size {batch_size} does not split over the {data} data-parallel rows "
            "of the mesh"
        )
    policy = keras.DTypePolicy(dtype or keras.config.dtype_policy().name)
    trained = lora_parameters(family, config, lora_rank, lora_targets)
    trained += trained_bias_elements(family, config, lora_targets, model)
    return MemoryEstimate(
        weights=weight_bytes(family, config, policy.variable_dtype, model),
        lora=16 * trained,
        activations=activation_bytes(
            family,
            config,
            batch_size // data * sequences_per_row,
            sequence_length,
            policy.compute_dtype,
            model,
            remat,
            fused_attention,
        ),
    )


def check_fits(estimate: MemoryEstimate, device_memory_bytes: int) -> None:
    """Refuse, in one line with the numbers, a run whose estimate exceeds a device's memory."""
    if estimate.total > device_memory_bytes:
        raise ShardingError(
            f"training needs about {estimate.describe()} but a device has "
            f"{device_memory_bytes / GIB:.2f} GiB; raise --model-parallel, lower --batch-size "
            "or --sequence-length, or pass --remat"
        )


def device_memory(device) -> int | None:
    """The memory an accelerator lets JAX allocate (None where the backend does not say)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("bytes_limit")
