"""Measure the Kaggle baseline notebook's path for one configuration; print one JSON line.

As the notebook trains: TensorFlow backend under tf.distribute.MirroredStrategy; the two
responses alone (no prompt), each padded to the sequence length by the preset's own keras-hub
preprocessor (DebertaV3Preprocessor for DeBERTa-v3) inside a tf.data map that re-tokenizes every
epoch (raw texts cached, shuffle buffer 1024); one shared backbone applied to side A and side B
separately; GlobalAveragePooling1D over every position (padding included); concatenation;
Dense(3, softmax); Adam 5e-6; categorical cross-entropy; full fine-tuning; batch 2.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchlib import (  # noqa: E402
    NOTEBOOK_LEARNING_RATE,
    emit,
    epoch_timer,
    fail,
    load_frame,
    median,
    model_flops,
    path_arguments,
    rates,
    timed,
)

from jaxpref.models import backbones  # noqa: E402

SHUFFLE_BUFFER = 1024


def responses(frame) -> np.ndarray:
    """(N, 2) strings: response A and response B, turns joined, no prompt."""

    def join(turns) -> str:
        return "\n".join(t for t in turns if t)

    pairs = zip(frame["response_a"], frame["response_b"], strict=True)
    return np.array([[join(a), join(b)] for a, b in pairs])


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


def measure(args) -> dict:
    import keras
    import keras_hub
    import tensorflow as tf

    # First, as the notebook does: seeding later clears TensorFlow's resources, the tokenizer's
    # SentencePiece op among them (NotFoundError when the dataset runs).
    keras.utils.set_random_seed(args.seed)
    strategy = tf.distribute.MirroredStrategy()
    frame = load_frame()
    texts = responses(frame)
    labels = keras.utils.to_categorical(frame["label"].to_numpy(), num_classes=3)
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            backbones.resolve_preset(args.preset), sequence_length=args.sequence_length
        )
        with strategy.scope():
            backbone = backbones.load_backbone(args.preset)
            backbones.check_sequence_length(backbone, args.sequence_length)
            model = build_model(backbone)
    except backbones.PresetError as err:
        fail(str(err))
    lengths = real_tokens(texts, preprocessor)
    n, length = args.rows, args.sequence_length
    train_ds = build_dataset(texts[:n], labels[:n], preprocessor, args.batch_size, True, args.seed)
    times: list[float] = []
    cpu_times: list[float] = []
    timer = epoch_timer(times, cpu_times)
    model.fit(train_ds, epochs=args.epochs + 1, callbacks=[timer], verbose=0)
    epoch_s = median(times[1:])
    computed = 2 * n * length
    flops = model_flops(backbone, [length] * 2 * n)
    result = {
        "path": "notebook",
        "devices": f"MirroredStrategy, {strategy.num_replicas_in_sync} replica(s)",
        "precision": keras.config.dtype_policy().name,
        "lora_rank": 0,
        "preprocessor": type(preprocessor).__name__,
        "backbone": type(backbone).__name__,
        "params": model.count_params(),
        "trainable_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "rows_total": len(frame),
        "mean_real_tokens_per_side": float(lengths.mean()),
        "padding_efficiency": float(lengths.mean() / length),
        "train": {
            "warmup_s": times[0],
            "epoch_s": times[1:],
            "epoch_cpu_s": cpu_times[1:],
            "rows_per_epoch": n,
            "steps_per_epoch": -(-n // args.batch_size),
            "median_epoch_s": epoch_s,
            "padding_efficiency": float(lengths[:n].mean() / length),
            "model_flops_per_s": flops / epoch_s,
        }
        | rates(n, int(lengths[:n].sum()), computed, epoch_s),
    }
    if args.infer_repeats:
        infer_ds = build_dataset(texts[:n], None, preprocessor, args.batch_size, False, args.seed)
        model.predict(infer_ds, verbose=0)
        seconds, _ = timed(lambda: model.predict(infer_ds, verbose=0), args.infer_repeats)
        result["infer"] = {"seconds": seconds, "padding_efficiency": result["padding_efficiency"]}
        result["infer"] |= rates(n, int(lengths[:n].sum()), computed, median(seconds))
    return result


def main(argv: list[str] | None = None) -> None:
    args = path_arguments(__doc__.splitlines()[0]).parse_args(argv)
    emit(measure(args) | {"args": vars(args)})


if __name__ == "__main__":
    main()
