"""The two training paths the benchmarks compare: jaxpref's and the Kaggle notebook's.

jaxpref's path: tokenize once, length-bucketed batch plans, tf.data, the siamese model (both
sides in one backbone call, masked mean pooling) on keras.distribution over JAX devices, with
jaxpref's defaults (LoRA rank 8, float32 on CPU, bf16 on accelerators).

The Kaggle baseline notebook's path, as it trains (run it with KERAS_BACKEND=tensorflow, under
tf.distribute.MirroredStrategy): the two responses alone (no prompt), each padded to the sequence
length by the preset's keras-hub preprocessor inside a tf.data map that re-tokenizes every epoch
(raw texts cached, shuffle buffer 1024); one shared backbone applied to side A and side B
separately; GlobalAveragePooling1D over every position (padding included); concatenation;
Dense(3, softmax); Adam 5e-6; categorical cross-entropy; full fine-tuning.

Imported by the measuring children only: importing it picks the Keras backend.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from benchlib import ArenaInputs, fail, load_frame

from jaxpref.config import ModelConfig, OptimConfig, default_learning_rate, resolve_precision
from jaxpref.models import backbones, objective, presets
from jaxpref.parallel import distribution

NOTEBOOK_LEARNING_RATE = 5e-6
SHUFFLE_BUFFER = 1024


def jaxpref_model(
    preset,
    sequence_length: int,
    batch_size: int,
    lora_rank: int,
    attention: str,
    devices: str = "cpu",
    num_devices: int | None = 1,
) -> SimpleNamespace:
    """jaxpref's siamese model (concat head, no side features) compiled as the trainer does, on
    the devices, and the arena sample: `.devices`, `.precision`, `.preprocessor`, `.backbone`,
    `.model`, `.frame`, `.labels`.

    The distribution comes first: it must exist before any Keras object (the preprocessor is one).
    """
    from jaxpref.models import preference as model_lib

    distribution.configure_environment(devices, num_devices)
    try:
        found = distribution.setup(devices, num_devices, batch_size)
    except distribution.DeviceError as err:
        fail(str(err))
    precision = resolve_precision("auto", distribution.platform_of(found))
    cfg = ModelConfig(
        preset=preset, head="concat", side_features=False, lora_rank=lora_rank,
        precision=precision, attention=attention,
    )  # fmt: skip
    try:
        preprocessor = backbones.load_preprocessor(preset, sequence_length)
        model = model_lib.build_model(cfg, sequence_length)
    except presets.PresetError as err:
        fail(str(err))
    objective.compile_model(model, default_learning_rate(lora_rank), OptimConfig().label_smoothing)
    frame = load_frame()
    return SimpleNamespace(
        devices=found, precision=precision, preprocessor=preprocessor, backbone=model.backbone,
        model=model, frame=frame, labels=frame["label"].to_numpy(),
    )  # fmt: skip


def fit(model, inputs: ArenaInputs, labels, plans, epochs: int = 1, callbacks=()) -> None:
    """model.fit over `plans`, one per epoch (tf.data input: Keras never reshuffles it)."""
    ds = inputs.dataset(plans, labels)
    model.fit(
        ds, epochs=epochs, steps_per_epoch=len(plans[0]), callbacks=list(callbacks), verbose=0
    )


def warmup_plan(plan) -> list:
    """One batch of every padded length in `plan`, its first batch first and also second.

    The first step compiles for the freshly built variables, the later ones for the variables
    the train step returns; the first length needs both.
    """
    seen: dict = {}
    for batch in plan:
        seen.setdefault(batch.length, batch)
    return [plan[0], *seen.values()]


def responses(frame) -> np.ndarray:
    """(N, 2) strings: response A and response B, turns joined, no prompt."""

    def join(turns) -> str:
        return "\n".join(t for t in turns if t)

    pairs = zip(frame["response_a"], frame["response_b"], strict=True)
    return np.array([[join(a), join(b)] for a, b in pairs])


def notebook_model(preset: str, sequence_length: int, seed: int) -> SimpleNamespace:
    """The notebook's model under MirroredStrategy, and the arena sample's responses and one-hot
    labels: `.strategy`, `.preprocessor`, `.backbone`, `.model`, `.frame`, `.texts`, `.labels`.

    Seeded first, as the notebook does: seeding later clears TensorFlow's resources, the
    tokenizer's SentencePiece op among them (NotFoundError when the dataset runs).
    """
    import keras
    import keras_hub
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    strategy = tf.distribute.MirroredStrategy()
    frame = load_frame()
    labels = keras.utils.to_categorical(frame["label"].to_numpy(), num_classes=3)
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            presets.probe(preset).location, sequence_length=sequence_length
        )
        with strategy.scope():
            backbone = backbones.load_backbone(preset)
            backbones.check_sequence_length(backbone, sequence_length)
            model = build_model(backbone)
    except presets.PresetError as err:
        fail(str(err))
    return SimpleNamespace(
        strategy=strategy, preprocessor=preprocessor, backbone=backbone, model=model,
        frame=frame, texts=responses(frame), labels=labels,
    )  # fmt: skip


def build_dataset(texts, labels, preprocessor, batch_size: int, shuffle: bool, seed: int):
    """The notebook's tf.data pipeline: cache raw texts, tokenize+pad in a map, shuffle, batch."""
    import tensorflow as tf

    auto = tf.data.AUTOTUNE
    slices = (texts,) if labels is None else (texts, labels)
    ds = tf.data.Dataset.from_tensor_slices(slices).cache()
    ds = ds.map(lambda x, *y: (preprocessor(x), *y), num_parallel_calls=auto)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed)
    return ds.batch(batch_size, drop_remainder=False).prefetch(auto)


def build_model(backbone):
    """Shared backbone on each side, mean over all positions, concatenation, softmax head."""
    import keras

    from jaxpref.models.preference import sequence_output

    keys = tuple(backbone.input.keys())
    inputs = {k: keras.Input(shape=(2, None), dtype="int32", name=k) for k in keys}
    pooled = []
    for side in range(2):
        hidden = sequence_output(backbone({k: v[:, side, :] for k, v in inputs.items()}))
        pooled.append(keras.layers.GlobalAveragePooling1D()(hidden))
    embeds = keras.layers.Concatenate(axis=-1)(pooled)
    outputs = keras.layers.Dense(3, activation="softmax", name="classifier")(embeds)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(NOTEBOOK_LEARNING_RATE),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[
            keras.metrics.CategoricalCrossentropy(name="log_loss"),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
        ],
    )
    return model


def real_tokens(texts, preprocessor) -> np.ndarray:
    """Real (unpadded) tokens of every response, (N, 2), as the preprocessor packs them."""
    masks = preprocessor(texts.reshape(-1))["padding_mask"]
    return np.asarray(masks).sum(axis=-1).reshape(texts.shape)
