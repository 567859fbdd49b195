"""jaxpref: pairwise human-preference models on JAX + Keras 3, across every device and host.

The public API (docs/api.md): `TrainConfig`, `train` -> `TrainedRun`, `load` -> `Predictor`,
`evaluate`, `export`, `read_rows`, `read_arena_csv`, `read_preferences`. They are imported from
`jaxpref.api` on first use, so `import jaxpref` loads no framework (JAX, Keras, TensorFlow).
Every other module is internal and may change.

Example:
    import jaxpref

    run = jaxpref.train(jaxpref.TrainConfig().replace(train_file="train.csv", epochs=1))
    jaxpref.load(run).predict_pairs("What is 2 + 2?", "4.", "It is 5.")
"""

__version__ = "0.1.0"

__all__ = [
    "Predictor",
    "TrainConfig",
    "TrainedRun",
    "evaluate",
    "export",
    "load",
    "read_arena_csv",
    "read_preferences",
    "read_rows",
    "train",
]


def __getattr__(name: str) -> object:
    """The public names, from `jaxpref.api` when first asked for."""
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("jaxpref.api"), name)
    raise AttributeError(f"module 'jaxpref' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
