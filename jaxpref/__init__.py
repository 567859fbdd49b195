"""jaxpref: pairwise human-preference models on JAX + Keras 3, across every device and host."""

__version__ = "0.1.0"
