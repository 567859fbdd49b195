"""Fitting a model: the trainer and its parts (callbacks, checkpoints, optimization,
distillation)."""
