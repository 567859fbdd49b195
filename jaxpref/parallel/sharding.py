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
from collections.abc import Mapping, Sequence
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


def block_activation_bytes(
    family: Family,
    config: Mapping,
    rows: int,
    sequence_length: int,
    compute_dtype: str,
    model: int,
    fused_attention: bool = False,
) -> float:
    """Activations of one decoder block that the backward pass keeps (see `memory_estimate`)."""
    d = family.dims(config)

    def split(size: int, divides: int) -> float:
        return size / model if divides % model == 0 else size

    width = 8 * d["hidden"] + split(6 * d["heads"] * d["head_dim"], d["heads"])
    width += split(4 * d["kv_heads"] * d["head_dim"], d["kv_heads"]) + split(4 * d["mlp"], d["mlp"])
    scores = 0 if fused_attention else split(3 * d["heads"] * sequence_length, d["heads"])
    return rows * sequence_length * (width * itemsize(compute_dtype) + 4 * scores)


def block_input_bytes(
    family: Family, config: Mapping, rows: int, sequence_length: int, compute_dtype: str
) -> int:
    """One block's input on one device: rows x sequence length x hidden, in the compute dtype."""
    return rows * sequence_length * family.dims(config)["hidden"] * itemsize(compute_dtype)


def rows_per_device(batch_size: int, data: int) -> int:
    """The rows each data-parallel group of the mesh sees; refuses a batch they cannot split."""
    if batch_size % data:
        raise ShardingError(
            f"--batch-size {batch_size} does not split over the {data} data-parallel rows "
            "of the mesh"
        )
    return batch_size // data


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
    rows = rows_per_device(batch_size, data) * sequences_per_row
    policy = keras.DTypePolicy(dtype or keras.config.dtype_policy().name)
    compute, layers = policy.compute_dtype, family.dims(config)["layers"]
    trained = lora_parameters(family, config, lora_rank, lora_targets)
    trained += trained_bias_elements(family, config, lora_targets, model)
    block = block_activation_bytes(
        family, config, rows, sequence_length, compute, model, fused_attention
    )
    if remat:
        kept = layers * block_input_bytes(family, config, rows, sequence_length, compute) + block
    else:
        kept = layers * block
    return MemoryEstimate(
        weights=weight_bytes(family, config, policy.variable_dtype, model),
        lora=16 * trained,
        activations=int(kept),
    )


# DeBERTa-v3 (head_dim 64, MLP 4 x hidden, 256 relative buckets: every v3 checkpoint) keeps,
# per encoder layer and sequence of L tokens, about TOKEN x L x hidden values in the compute
# dtype and SCORE x heads x L^2 float32 values for the backward pass. Fitted to XLA's buffer
# assignment of the siamese LoRA gradient on CPU in float32 (per-layer difference of 1- and
# 2-layer models, jaxpref's attention): hidden 768 / 12 heads / MLP 3,072 and 1,024 / 16 /
# 4,096 at L = 512 and 1,024 within 1%; hidden 128 / 2 heads overestimated by 8-13%. The
# score tensors: logits, relative scores, float32 softmax; attention-probability dropout
# adds two more. CPU XLA computes float16 in float32, so the float16 sizes are not measured:
# the score tensors are counted at 4 bytes (keras-hub's softmax is float32), the rest at the
# compute itemsize.
DEBERTA_TOKEN_VALUES = 49
DEBERTA_SCORE_VALUES = {"efficient_dropout": 4.75, "efficient": 2.75}


def deberta_parameters(config: Mapping) -> int:
    """Parameters of a keras-hub `DebertaV3Backbone` config: token and relative embeddings
    with their norms, and per layer q/k/v/o, the MLP and two norms (all with biases)."""
    h, f = config["hidden_dim"], config["intermediate_dim"]
    embeddings = config["vocabulary_size"] * h + 2 * config["bucket_size"] * h + 4 * h
    layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h
    return embeddings + config["num_layers"] * layer


def deberta_memory_estimate(
    backbone_config: Mapping,
    batch_size: int,
    sequence_length: int,
    lora_rank: int,
    dtype: str | None = None,
    data_parallel: int = 1,
    sequences_per_row: int = 2,
    attention: str = "efficient_dropout",
) -> MemoryEstimate:
    """Per-device training memory of a DeBERTa-v3 preference model (data parallel).

    weights     = frozen parameters x variable itemsize (all of them with LoRA, none without).
    lora        = 16 bytes x what trains (float32 values, gradients, Adam m and v): the LoRA
                  factors of keras-hub's default layers (query, value: rank x (hidden x heads
                  + head_dim) each), or every parameter with `lora_rank=0`.
    activations = layers x rows x sequences_per_row x (DEBERTA_TOKEN_VALUES x L x H x c
                  + DEBERTA_SCORE_VALUES[attention] x heads x L^2 x 4), rows = batch / devices;
                  siamese rows are 2 sequences of L tokens, cross-encoded rows 1.
    The head, embedding gather and XLA workspace are not counted.

    >>> small = {"class_name": "DebertaV3Backbone", "config": dict(vocabulary_size=128100,
    ...     num_layers=6, num_heads=12, hidden_dim=768, intermediate_dim=3072, bucket_size=256)}
    >>> deberta_memory_estimate(small, 8, 512, 8, "mixed_float16", 2).describe()
    '4.93 GiB per device (weights 0.53, LoRA + Adam 0.01, activations 4.39)'
    """
    import keras

    if attention not in DEBERTA_SCORE_VALUES:
        raise ShardingError(
            f"--attention {attention}: the memory estimate covers {', '.join(DEBERTA_SCORE_VALUES)}"
        )
    config = backbone_config["config"]
    policy = keras.DTypePolicy(dtype or keras.config.dtype_policy().name)
    parameters = deberta_parameters(config)
    h, heads, layers = config["hidden_dim"], config["num_heads"], config["num_layers"]
    lora = 2 * layers * lora_rank * (h * heads + h // heads)
    trained = lora if lora_rank else parameters
    frozen = parameters if lora_rank else 0
    sequences = rows_per_device(batch_size, data_parallel) * sequences_per_row
    length = sequence_length
    per_sequence = DEBERTA_TOKEN_VALUES * length * h * itemsize(policy.compute_dtype)
    per_sequence += DEBERTA_SCORE_VALUES[attention] * heads * length**2 * 4
    return MemoryEstimate(
        weights=frozen * itemsize(policy.variable_dtype),
        lora=16 * trained,
        activations=int(layers * sequences * per_sequence),
    )


@dataclass(frozen=True)
class InferenceEstimate:
    """Bytes one device holds while predicting: weights (int8 and their scales when quantized),
    LoRA factors (unmerged in a run; merged away by quantization) and one block's activations.

    `loading`: quantization happens after the float weights are loaded (`models.quantize`), so
    a device first holds the float weights and factors; 0 when nothing is quantized.
    """

    weights: int
    lora: int
    activations: int
    loading: int = 0

    @property
    def total(self) -> int:
        return max(self.weights + self.lora + self.activations, self.loading)

    def describe(self) -> str:
        text = (
            f"{self.total / GIB:.2f} GiB per device (weights {self.weights / GIB:.2f}, "
            f"LoRA {self.lora / GIB:.2f}, activations {self.activations / GIB:.2f}"
        )
        if self.loading:
            text += f"; float weights loaded before quantizing {self.loading / GIB:.2f}"
        return text + ")"


def quantized_elements(family: Family, config: Mapping, weight: Weight) -> tuple[int, int] | None:
    """(int8 elements, float scale elements) of `weight` in one block (or once, if not per
    layer) after Keras' int8 quantization; None for weights it leaves in float (norms, biases).

    Kernels get one scale per output element (their size over the contracted input: hidden,
    heads x head_dim for the attention output, the MLP width for down), embedding tables one
    per token row.
    """
    d = family.dims(config)
    name = weight.path.split("/")[-1]
    if name in ("embeddings", "reverse_embeddings"):
        return math.prod(weight.shape), d["vocab"]
    if name != "kernel":
        return None
    projection = {v: k for k, v in family.layer_names.items()}[weight.path.split("/")[-2]]
    contracted = {"o": d["heads"] * d["head_dim"], "down": d["mlp"]}.get(projection, d["hidden"])
    return math.prod(weight.shape), math.prod(weight.shape) // contracted


def quantized_weight_bytes(family: Family, config: Mapping, dtype: str, model: int) -> int:
    """Bytes of the int8-quantized backbone on one device of a model axis `model`: int8
    kernels and embeddings sharded as `layout_map` shards them, their scales (in the variable
    dtype `dtype`) replicated, norms and biases in `dtype`."""
    layers = family.dims(config)["layers"]
    total = 0
    for weight in family.weights(config):
        copies = len(weight.paths(layers))
        quantized = quantized_elements(family, config, weight)
        if quantized is None:
            total += elements_per_device(weight, layers, model) * itemsize(dtype)
            continue
        total += elements_per_device(weight, layers, model)  # 1 byte each
        total += copies * quantized[1] * itemsize(dtype)
    return total


def inference_memory_estimate(
    backbone_config: Mapping,
    batch_size: int,
    sequence_length: int,
    lora_rank: int = 0,
    lora_targets: Sequence[str] = (),
    dtype: str | None = None,
    mesh: tuple[int, int] = (1, 1),
    quantize: str | None = None,
    fused_attention: bool = False,
    sequences_per_row: int = 1,
) -> InferenceEstimate:
    """Per-device memory of a decoder predicting `batch_size` rows of `sequence_length` tokens
    (`sequences_per_row` sequences each: 2 for a siamese reward model).

    weights     = as `memory_estimate`, or with `quantize="int8"`: 1 byte per kernel and
                  embedding element, sharded, plus one scale per output channel (per token for
                  embeddings), replicated, in the variable dtype (`quantized_weight_bytes`).
    lora        = `lora_parameters` x variable itemsize, replicated (0 when quantized: merged).
    activations = one block's (`block_activation_bytes`, an upper bound: a forward pass frees
                  what the backward would keep) plus the block input b x s x H x c.
    loading     = the float weights and LoRA factors (when quantized; see `InferenceEstimate`).

    Gemma-2-9B (9.24e9 parameters) on one device: bf16 weights 17.21 GiB, int8 8.61 GiB.
    """
    import keras

    family = family_of(backbone_config)
    config = backbone_config["config"]
    data, model = mesh
    rows = rows_per_device(batch_size, data) * sequences_per_row
    policy = keras.DTypePolicy(dtype or keras.config.dtype_policy().name)
    variable, compute = policy.variable_dtype, policy.compute_dtype
    floats = weight_bytes(family, config, variable, model)
    lora = lora_parameters(family, config, lora_rank, list(lora_targets)) * itemsize(variable)
    block = block_activation_bytes(
        family, config, rows, sequence_length, compute, model, fused_attention
    )
    activations = int(block + block_input_bytes(family, config, rows, sequence_length, compute))
    if quantize is None:
        return InferenceEstimate(floats, lora, activations)
    from jaxpref.models.quantize import check_quantizable

    check_quantizable(quantize, policy.name)
    weights = quantized_weight_bytes(family, config, variable, model)
    return InferenceEstimate(weights, 0, activations, loading=floats + lora)


TRAINING_REMEDIES = (
    "raise --model-parallel, lower --batch-size or --sequence-length, or pass --remat"
)


def check_fits(
    estimate: MemoryEstimate | InferenceEstimate,
    device_memory_bytes: int,
    task: str = "training",
    remedies: str = TRAINING_REMEDIES,
) -> None:
    """Refuse, in one line with the numbers, a `task` whose estimate exceeds a device's memory."""
    if estimate.total > device_memory_bytes:
        raise ShardingError(
            f"{task} needs about {estimate.describe()} but a device has "
            f"{device_memory_bytes / GIB:.2f} GiB; {remedies}"
        )


def check_devices_fit(
    estimate: MemoryEstimate | InferenceEstimate,
    devices: list,
    task: str = "training",
    remedies: str = TRAINING_REMEDIES,
) -> None:
    """`check_fits` against the memory of this process's first device among `devices` (JAX
    reads only its own); a device that reports no limit (a CPU) passes."""
    import jax

    local = next(d for d in devices if d.process_index == jax.process_index())
    limit = device_memory(local)
    if limit is not None:
        check_fits(estimate, limit, task, remedies)


def device_memory(device) -> int | None:
    """The memory an accelerator lets JAX allocate (None where the backend does not say)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("bytes_limit")
