"""Decoder-LLM families that jaxpref can shard and LoRA-tune, and where their weights live.

One `Family` per keras-hub backbone (Gemma/Gemma-2, Llama-3, Mistral, Qwen-2, Qwen-3): the
Hugging Face `model_type`s keras-hub 0.32 converts into it, the names of its projection layers
(what `lora.target_layers` picks from), and `weights(config)`, the path and shape of every
backbone variable. The layout map and the memory estimate in `parallel.sharding` are both
computed from that table, and tests check it against the variables of real backbones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
TARGET_GROUPS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}


class FamilyError(ValueError):
    """A model, config or option that jaxpref's decoder support does not cover."""


@dataclass(frozen=True)
class Weight:
    """One backbone variable: `path` has `{i}` for the block index when `per_layer`.

    `shard_dims` are the dimensions that may go on the "model" mesh axis, in order of
    preference; the first one the axis divides is used, and none means replicated.
    """

    path: str
    shape: tuple[int, ...]
    shard_dims: tuple[int, ...] = ()
    per_layer: bool = True

    def paths(self, num_layers: int) -> list[str]:
        if not self.per_layer:
            return [self.path]
        return [self.path.format(i=i) for i in range(num_layers)]


@dataclass(frozen=True)
class Family:
    """What jaxpref needs to know about one keras-hub decoder backbone class."""

    name: str
    backbone_class: str
    hf_model_types: tuple[str, ...]
    block: str  # per-block layer name, formatted with the block index
    attention: str  # attention sub-layer of a block
    layer_names: Mapping[str, str]  # projection ("q", ..., "down") -> keras layer name
    norms: tuple[str, ...]  # per-block normalisation layers
    final_norm: str
    heads_first: bool = False  # q/k/v kernels are (heads, hidden, head_dim)
    mlp_split: int = 1  # keras intermediate_dim / width of one MLP branch
    tied_default: bool = True  # tie_word_embeddings when the config does not say
    qkv_bias: bool = False
    qk_norm: bool = False
    kv_heads_key: str = "num_key_value_heads"

    @property
    def class_prefix(self) -> str:
        """keras-hub's prefix of the family's classes: GemmaTokenizer, QwenCausalLM, ..."""
        return self.backbone_class.removesuffix("Backbone")

    def dims(self, config: Mapping) -> dict[str, int]:
        """Hidden, head and MLP sizes from a keras-hub backbone config."""
        hidden, heads = config["hidden_dim"], config["num_query_heads"]
        return {
            "vocab": config["vocabulary_size"],
            "hidden": hidden,
            "layers": config["num_layers"],
            "heads": heads,
            "kv_heads": config[self.kv_heads_key],
            "head_dim": config.get("head_dim") or hidden // heads,
            "mlp": config["intermediate_dim"] // self.mlp_split,
        }

    def tied(self, config: Mapping) -> bool:
        return bool(config.get("tie_word_embeddings", self.tied_default))

    def layer_path(self, projection: str) -> str:
        name = self.layer_names[projection]
        scope = self.attention + "/" if projection in TARGET_GROUPS["attention"] else ""
        return f"{self.block}/{scope}{name}"

    def weights(self, config: Mapping) -> list[Weight]:
        """Every variable of the backbone built from `config` (LoRA variables excluded)."""
        d = self.dims(config)
        h, heads, kv, hd, mlp = d["hidden"], d["heads"], d["kv_heads"], d["head_dim"], d["mlp"]

        def qkv(n: int) -> tuple[tuple[int, ...], int]:
            return ((n, h, hd), 0) if self.heads_first else ((h, n, hd), 1)

        kernels = {
            "q": qkv(heads),
            "k": qkv(kv),
            "v": qkv(kv),
            "o": ((heads, hd, h), 0),
            "gate": ((h, mlp), 1),
            "up": ((h, mlp), 1),
            "down": ((mlp, h), 0),
        }
        out = [Weight("token_embedding/embeddings", (d["vocab"], h), (0, 1), per_layer=False)]
        if not self.tied(config):
            out.append(Weight("token_embedding/reverse_embeddings", (h, d["vocab"]), (1, 0), False))
        for projection, (shape, dim) in kernels.items():
            path = self.layer_path(projection)
            out.append(Weight(f"{path}/kernel", shape, (dim,)))
            if self.qkv_bias and projection in ("q", "k", "v"):
                out.append(Weight(f"{path}/bias", shape[1:], (0,)))
        norms = list(self.norms)
        if config.get("use_post_attention_norm"):
            norms.append("post_attention_norm")
        if config.get("use_post_ffw_norm"):
            norms.append("post_ffw_norm")
        out += [Weight(f"{self.block}/{norm}/scale", (h,)) for norm in norms]
        if self.qk_norm:
            out += [
                Weight(f"{self.block}/{self.attention}/{name}_dense_layernorm/scale", (hd,))
                for name in ("query", "key")
            ]
        out.append(Weight(f"{self.final_norm}/scale", (h,), per_layer=False))
        return out


_GEMMA = {
    "q": "query",
    "k": "key",
    "v": "value",
    "o": "attention_output",
    "gate": "ffw_gating",
    "up": "ffw_gating_2",
    "down": "ffw_linear",
}
_LLAMA = {
    **_GEMMA,
    "gate": "feedforward_gate_dense",
    "up": "feedforward_intermediate_dense",
    "down": "feedforward_output_dense",
}
_GEMMA_LAYOUT = dict(
    backbone_class="GemmaBackbone",
    block="decoder_block_{i}",
    attention="attention",
    layer_names=_GEMMA,
    norms=("pre_attention_norm", "pre_ffw_norm"),
    final_norm="final_normalization",
    heads_first=True,
    mlp_split=2,
)
_LLAMA_LAYOUT = dict(
    block="transformer_layer_{i}",
    attention="self_attention",
    layer_names=_LLAMA,
    norms=("self_attention_layernorm", "feedforward_layernorm"),
    final_norm="sequence_output_layernorm",
)

FAMILIES = {
    f.name: f
    for f in (
        Family("gemma", hf_model_types=("gemma",), **_GEMMA_LAYOUT),
        Family("gemma2", hf_model_types=("gemma2",), **_GEMMA_LAYOUT),
        Family("llama3", "Llama3Backbone", ("llama",), tied_default=False, **_LLAMA_LAYOUT),
        Family("mistral", "MistralBackbone", ("mistral",), tied_default=False, **_LLAMA_LAYOUT),
        Family("qwen2", "QwenBackbone", ("qwen2",), qkv_bias=True, **_LLAMA_LAYOUT),
        Family("qwen3", "Qwen3Backbone", ("qwen3",), qk_norm=True, **_LLAMA_LAYOUT),
    )
}


def supported() -> str:
    """The supported families with their Hugging Face model types, for error messages."""
    return ", ".join(
        f"{f.name} ({'/'.join(f.hf_model_types)} -> {f.backbone_class})" for f in FAMILIES.values()
    )


def family_of(backbone_or_config) -> Family:
    """The family of a keras-hub backbone or its serialized config.

    A serialized config is `keras.saving.serialize_keras_object(backbone)` (a preset's
    config.json). Gemma and Gemma-2 share `GemmaBackbone`; Gemma-2 is the one with
    post-attention norms.
    """
    if isinstance(backbone_or_config, Mapping):
        class_name = backbone_or_config.get("class_name")
        config = backbone_or_config.get("config", {})
    else:
        class_name = type(backbone_or_config).__name__
        config = backbone_or_config.get_config()
    if class_name == "GemmaBackbone" and config.get("use_post_attention_norm"):
        return FAMILIES["gemma2"]
    for family in FAMILIES.values():
        if family.backbone_class == class_name:
            return family
    raise FamilyError(f"{class_name} is not a supported decoder backbone; supported: {supported()}")


def family_of_model_type(model_type: str) -> Family:
    """The family keras-hub converts a Hugging Face config of `model_type` into."""
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    raise FamilyError(
        f"Hugging Face model_type {model_type!r} is not a supported decoder; "
        f"supported: {supported()}"
    )


def remat_scope(backbone_config: Mapping):
    """A `keras.RematScope` that recomputes each decoder block in the backward pass.

    Build the backbone inside it (`with remat_scope(config): Backbone.from_preset(...)`):
    Keras fixes a layer's rematerialisation when the layer is created.
    """
    import keras

    family = family_of(backbone_config)
    layers = family.dims(backbone_config["config"])["layers"]
    names = [family.block.format(i=i) for i in range(layers)]
    return keras.RematScope(mode="list_of_layers", layer_names=names)
