"""The optimizer, loss and schedule of `compile_model`: weight decay, gradient accumulation,
gradient clipping, and which step the learning-rate schedule sees."""

import jax
import keras
import numpy as np
import pytest

from jaxpref.models import objective
from jaxpref.training import optimization

ROWS = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
TARGETS = np.eye(3, dtype="float32")[np.arange(16) % 3]


def _small_model(learning_rate=0.1, **options) -> keras.Model:
    """A softmax layer compiled by `compile_model`, from the same start every call."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    objective.compile_model(model, learning_rate, **options)
    return model


def _trained(model: keras.Model, batches: int) -> list[np.ndarray]:
    """The weights after training on the 16 rows cut into `batches` equal batches, in order."""
    for x, y in zip(np.split(ROWS, batches), np.split(TARGETS, batches), strict=True):
        model.train_on_batch(x, y)
    return [w.numpy() for w in model.trainable_weights]


def _one_step(weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(kernel before, kernel after) one training step of a small model from the same start."""
    model = _small_model(weight_decay=weight_decay)
    before = model.layers[0].kernel.numpy().copy()
    model.train_on_batch(ROWS[:8], TARGETS[:8])
    return before, model.layers[0].kernel.numpy()


def test_weight_decay_is_decoupled_from_the_adam_step():
    """AdamW's first step is Adam's step minus learning rate x decay x the weight."""
    start, adam = _one_step(0.0)
    same_start, adamw = _one_step(0.5)
    np.testing.assert_array_equal(start, same_start)
    np.testing.assert_allclose(adamw, adam - 0.1 * 0.5 * start, atol=1e-6)
    assert not np.allclose(adamw, adam)


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.5, "clip_norm": 0.05}])
def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(options):
    accumulating = _small_model(accumulation_steps=2, **options)
    start = [w.numpy().copy() for w in accumulating.trainable_weights]
    accumulating.train_on_batch(ROWS[:4], TARGETS[:4])
    for weight, before in zip(accumulating.trainable_weights, start, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before)  # gradients kept, not applied
    accumulating.train_on_batch(ROWS[4:8], TARGETS[4:8])
    one_step = _small_model(**options)
    one_step.train_on_batch(ROWS[:8], TARGETS[:8])
    for a, b, before in zip(accumulating.trainable_weights, one_step.trainable_weights, start,
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        assert not np.allclose(a.numpy(), before)
    optimizer = accumulating.optimizer
    assert (optimization.batches_done(optimizer), int(optimizer.iterations)) == (2, 1)


class EveryOtherBatch(keras.optimizers.schedules.LearningRateSchedule):
    """Update k of a run without accumulation at the rate of `schedule` at batch 2k + 1."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, step):
        return self.schedule(2 * step + 1)


def test_the_schedule_counts_batches_with_accumulation():
    """With --grad-accum 2, the k-th update runs at the rate of batch 2k + 1 of a schedule over
    all the batches: four updates of two batches of 2 rows train as four batches of 4 rows at
    those rates, and the schedule spans the whole run."""
    schedule = optimization.learning_rate_schedule(0.1, "cosine", total_steps=8)
    accumulated = _trained(_small_model(schedule, accumulation_steps=2), batches=8)
    reference = _trained(_small_model(EveryOtherBatch(schedule)), batches=4)
    for a, b in zip(accumulated, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    rates = [optimization.rate_at(schedule)(2 * k + 1) for k in range(4)]
    assert rates[0] > rates[-1] > 0.0 and max(rates) > 0.09  # the last update still decays


def test_a_clipped_step_is_the_step_of_the_clipped_gradient():
    """The step of `clip_norm` is Adam's step on the gradient scaled to that global norm. The
    norm is chosen small enough that Adam's epsilon makes its step depend on the scale."""
    clip_norm = 1e-5
    model = _small_model(clip_norm=clip_norm)
    weights = [w.value for w in model.trainable_weights]

    def loss(trainable):
        probs, _ = model.stateless_call(trainable, [], ROWS[:8], training=True)
        return model.loss(TARGETS[:8], probs)

    gradient = jax.grad(loss)(weights)
    norm = np.sqrt(sum(float((g**2).sum()) for g in gradient))
    assert norm > clip_norm
    expected = {}
    for name, scale in (("clipped", clip_norm / norm), ("unclipped", 1.0)):
        reference = _small_model()
        reference.optimizer.apply([g * scale for g in gradient], reference.trainable_weights)
        expected[name] = [w.numpy() for w in reference.trainable_weights]
    model.train_on_batch(ROWS[:8], TARGETS[:8])
    for weight, clipped, unclipped in zip(model.trainable_weights, *expected.values(),
                                          strict=True):  # fmt: skip
        np.testing.assert_allclose(weight.numpy(), clipped, atol=1e-6)
        assert not np.allclose(weight.numpy(), unclipped, atol=1e-3)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_schedule_peaks_at_the_learning_rate(schedule):
    rate = optimization.learning_rate_schedule(2e-3, schedule, total_steps=100)
    at = optimization.rate_at(rate)
    assert max(at(step) for step in range(100)) == pytest.approx(2e-3)
    assert at(99) == pytest.approx(2e-3 if schedule == "constant" else 0.0, abs=1e-6)


def _tiny_preference_model(preset) -> keras.Model:
    """The tiny preset's LoRA preference model, every dropout rate 0 (a batch of 8 rows and two
    of 4 then see the same function), from the same start every call."""
    from jaxpref.config import ModelConfig
    from jaxpref.models import preference

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(preset=str(preset), lora_rank=4, dropout=0.0, attention="efficient",
                      side_features=False, precision="float32")  # fmt: skip
    model = preference.build_model(cfg, sequence_length=16)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def test_accumulation_on_the_tiny_preset_model_equals_one_larger_batch(tiny_preset):
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(5, 500, (8, 2, 16)).astype("int32"),
         "padding_mask": np.ones((8, 2, 16), "int32")}  # fmt: skip
    weights = {}
    for steps in (1, 2):
        model = _tiny_preference_model(tiny_preset)
        assert set(model.input_keys) == set(x)
        weights["start"] = [w.numpy() for w in model.trainable_weights]
        objective.compile_model(model, 1e-2, accumulation_steps=steps)
        for part in np.split(np.arange(8), steps):
            model.train_on_batch({k: v[part] for k, v in x.items()}, TARGETS[part])
        weights[steps] = [w.numpy() for w in model.trainable_weights]
    names = [w.path for w in model.trainable_weights]
    for name, a, b in zip(names, weights[2], weights[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
    moved = [n for n, a, s in zip(names, weights[2], weights["start"], strict=True)
             if not np.allclose(a, s)]  # fmt: skip
    assert any("lora_kernel_b" in n for n in moved) and any("logits" in n for n in moved), moved
