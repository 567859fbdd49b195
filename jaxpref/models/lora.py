"""LoRA for every backbone: which layers get adapters, enabling them, their dropout, merging.

`target_layers` turns `--lora-targets` into layer names (for decoders through the family's
projection table in `families`); `enable` freezes a backbone and gives those layers rank-r
factors scaled alpha / r.

Keras adds a LoRA layer's factors into its kernel, W + s A B, and multiplies once: no place is
left for dropout on the adapter path alone (PEFT's `lora_dropout`). `add_dropout` gives each such
layer a call that computes x W + s (dropout(x) A) B instead: the frozen path reads the input as
it is, the adapters a dropped-out copy while training; at inference both forms give the same
outputs up to float rounding, so a run trained with dropout predicts as the merged layer would.
The factored product also never forms the merged kernel or its full-size gradient.
`merge_into_kernel` folds a layer's factors into its kernel, so that fine-tunes can be averaged.
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from jaxpref.models import families

DEFAULT_DECODER_TARGETS = "attention,mlp"


def target_layers(spec: str, family: families.Family | None = None) -> list[str] | None:
    """The layer names `--lora-targets` (`spec`, comma separated) means.

    For a decoder `family`: groups "attention" (q,k,v,o), "mlp" (gate,up,down) and "all",
    projections q, k, v, o, gate, up, down, or the family's own layer names; empty means
    `DEFAULT_DECODER_TARGETS`. For an encoder (no family): layer names as given; empty means
    None, keras-hub's default layers (query and value).

    >>> target_layers("q,v,ffw_linear", families.FAMILIES["gemma"])
    ['query', 'value', 'ffw_linear']
    """
    if family is None:
        return [name.strip() for name in spec.split(",")] if spec else None
    spec = spec or DEFAULT_DECODER_TARGETS
    names = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "all":
            projections = families.PROJECTIONS
        elif item in families.TARGET_GROUPS:
            projections = families.TARGET_GROUPS[item]
        elif item in family.layer_names:
            projections = (item,)
        else:
            projections = tuple(p for p, name in family.layer_names.items() if name == item)
        if not projections:
            choices = ", ".join([*families.TARGET_GROUPS, "all", *families.PROJECTIONS])
            raise families.FamilyError(
                f"--lora-targets {spec!r}: unknown target {item!r}; use {choices}"
            )
        names += [family.layer_names[p] for p in projections]
    return list(dict.fromkeys(names))


def enable(
    backbone, rank: int, targets: list[str] | None = None, alpha: float | None = None
) -> int:
    """Freeze `backbone` and add rank-`rank` LoRA factors to the `targets` layers (None:
    keras-hub's default layers); returns how many layers got factors.

    keras-hub's `Backbone.enable_lora(rank, target_layer_names)` has no alpha; the Keras layers
    do (`lora_alpha`, scale alpha / rank, default alpha = rank), so it is set on each LoRA layer
    after keras-hub enabled it.
    """
    if rank < 1:
        raise families.FamilyError(f"--lora-rank must be at least 1, got {rank}")
    backbone.enable_lora(rank, target_layer_names=targets)
    layers = lora_layers(backbone)
    if alpha is not None:
        for layer in layers:
            layer.lora_alpha = alpha
    return len(layers)


def lora_layers(backbone) -> list:
    """The layers of `backbone` that carry LoRA factors (Dense or EinsumDense)."""
    return [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def add_dropout(backbone, rate: float, seed_generator: keras.random.SeedGenerator) -> int:
    """Route every LoRA layer of `backbone` through `dropout_call` with dropout `rate`, masks
    drawn from `seed_generator` (the caller tracks it, so its state trains and checkpoints
    with the model's). Call before the backbone is called on symbolic inputs; returns how many
    layers it changed."""
    if not 0 < rate < 1:
        raise ValueError(f"LoRA dropout must be in (0, 1), got {rate}")
    layers = lora_layers(backbone)
    for layer in layers:
        if layer.quantization_mode is not None:
            raise ValueError(f"{layer.name}: LoRA dropout on a quantized layer is not supported")
        # Keras inspected `call` at construction (it takes `training`); only the body changes.
        layer.call = functools.partial(dropout_call, layer, rate, seed_generator)
    return len(layers)


def dropout_call(layer, rate: float, seed_generator, inputs, training=None):
    """`layer`'s output with LoRA dropout: x W + s (dropout(x) A) B, then bias and activation."""
    dtype = layer.compute_dtype
    kernel = ops.cast(layer._kernel, dtype)  # the frozen kernel; `layer.kernel` adds A B
    a, b = ops.cast(layer.lora_kernel_a, dtype), ops.cast(layer.lora_kernel_b, dtype)
    scale = layer.lora_alpha / layer.lora_rank
    dropped = keras.random.dropout(inputs, rate, seed=seed_generator) if training else inputs
    equation = getattr(layer, "equation", None)
    if equation is None:  # Dense
        x = ops.matmul(inputs, kernel) + scale * ops.matmul(ops.matmul(dropped, a), b)
    elif factored_einsum(equation):
        x = ops.einsum(equation, inputs, kernel)
        x = x + scale * ops.matmul(ops.einsum(equation, dropped, a), b)
    else:
        x = ops.einsum(equation, inputs, kernel)
        x = x + ops.einsum(equation, dropped, scale * ops.matmul(a, b))
    if layer.bias is not None:
        x = x + ops.cast(layer.bias, dtype)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def merge_into_kernel(layer) -> None:
    """Fold `layer`'s LoRA factors into its frozen kernel (W <- W + s A B, then B <- 0).

    The layer computes the same, but its kernel alone now holds the fine-tune: the mean of
    several fine-tunes' kernels is the mean of W + s A_i B_i, which averaging the factors
    A_i and B_i apart would not give (A B is not linear in the pair).
    """
    scale = layer.lora_alpha / layer.lora_rank
    delta = scale * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
    layer._kernel.assign(ops.add(layer._kernel, ops.cast(delta, layer._kernel.dtype)))
    layer.lora_kernel_b.assign(ops.zeros(layer.lora_kernel_b.shape, layer.lora_kernel_b.dtype))


def factored_einsum(equation: str) -> bool:
    """Whether the kernel's last axis is the output's last (then einsum(x, A) B = einsum(x, A B),
    A having the kernel's shape with the last axis cut to the rank)."""
    operands, output = equation.replace(" ", "").split("->")
    kernel = operands.split(",")[1]
    return kernel[-1] == output[-1] and kernel.count(kernel[-1]) == 1
