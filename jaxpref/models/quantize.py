"""Int8 weight-only quantization of a trained model's backbone, for inference.

`quantize_backbone(model)` first folds each LoRA layer's factors into its kernel
(`lora.merge_into_kernel`) and removes them, then calls Keras' own
`backbone.quantize("int8")` on the Dense, EinsumDense and Embedding layers (keras-hub's
`ReversibleEmbedding` among them): each kernel becomes int8 with one float scale per output
channel (per token row for embeddings), so a kernel of n parameters holds n bytes plus its
scales instead of 2n (bf16/fp16) or 4n (float32). Activations are not quantized
(`Int8QuantizationConfig(activation_quantizer=None)`: Keras' default int8 also rounds each
layer's input to int8 per token, which decoder activations with outliers do not survive well);
the matmul reads float inputs and int8 weights, scaled back per output channel. The head stays
in float32. Norms, biases and DeBERTa's relative table stay as they are.

Merged, not kept beside the int8 kernel: Keras would run the float factors as a second path on
every call (QLoRA style), and their float32 copies of rank x (inputs + outputs) per layer are
several hundred MB for a 9B model. The merged delta is rounded with the kernel.

Works on sharded variables too: the int8 kernel keeps its path, so a `ModelParallel` layout
map of exact paths (`parallel.sharding.layout_map`) shards it as it sharded the float kernel,
and the small scales are replicated. Keras quantizes after the float weights are loaded: a
device first holds the float weights, then the int8 ones (`sharding.inference_memory_estimate`
counts both).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import keras

from jaxpref.config import QUANTIZE_MODES, ConfigError
from jaxpref.models import lora

QUANTIZED_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


@dataclass(frozen=True)
class QuantizedBytes:
    """Bytes of the backbone's variables before and after `quantize_backbone`."""

    before: int
    after: int

    def describe(self) -> str:
        mib = 2**20
        return (
            f"backbone weights {self.before / mib:.1f} MiB -> {self.after / mib:.1f} MiB "
            f"({self.after / self.before:.0%})"
        )


def variable_bytes(variables) -> int:
    """Bytes the variables hold as whole arrays (each shard of a sharded one counted once)."""
    import jax.numpy as jnp

    return sum(math.prod(v.shape) * jnp.dtype(v.dtype).itemsize for v in variables)


def check_quantizable(mode: str, precision: str) -> None:
    """Refuse, in one line, a mode other than int8 or a float16 compute dtype: Keras refuses
    int8 there (`Layer._check_quantize_args`; the int8 products, scaled back only after the
    matmul, overflow float16)."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize {mode}: expected one of {', '.join(QUANTIZE_MODES)}")
    if keras.DTypePolicy(precision).compute_dtype == "float16":
        raise ConfigError(
            f"--quantize {mode} with --precision {precision}: Keras quantizes to int8 only "
            "with bfloat16 or float32 compute (float16 overflows); pass --precision bfloat16, "
            "mixed_bfloat16 or float32"
        )


def remove_lora(layer) -> None:
    """Fold `layer`'s LoRA factors into its kernel and delete them: it becomes a plain layer
    again (and loses `lora.add_dropout`'s call, which reads the float kernel)."""
    lora.merge_into_kernel(layer)
    layer.__dict__.pop("call", None)  # `add_dropout` set it on the instance
    layer.lora_enabled, layer.lora_rank = False, None  # lora_rank: no LoRA in get_config
    del layer.lora_kernel_a
    del layer.lora_kernel_b


def quantize_backbone(model, mode: str = "int8") -> QuantizedBytes:
    """Merge `model.backbone`'s LoRA factors and quantize its weights to int8 in place.

    Call after the trained weights are loaded and before the first prediction. Returns the
    backbone's variable bytes before and after.

    >>> model, packer, cfg = predict.load_run("runs/minilm")  # doctest: +SKIP
    >>> quantize_backbone(model).describe()  # MiniLM-L6 BERT, LoRA rank 4  # doctest: +SKIP
    'backbone weights 87.5 MiB -> 22.5 MiB (26%)'
    """
    backbone = model.backbone
    check_quantizable(mode, backbone.dtype_policy.name)
    before = variable_bytes(backbone.weights)
    for layer in lora.lora_layers(backbone):
        remove_lora(layer)
    config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    with warnings.catch_warnings():
        # numpy 2 asks jax arrays for `copy=`; Keras' host-side quantizer trips it once per kernel
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        backbone.quantize(mode, config=config, filters=quantizable)
    model.predict_function = None  # compiled, if at all, with the float weights
    return QuantizedBytes(before, variable_bytes(backbone.weights))


def quantizable(layer) -> bool:
    """Whether `quantize_backbone` quantizes `layer` (Keras' `quantize` filter)."""
    return isinstance(layer, QUANTIZED_LAYERS)
