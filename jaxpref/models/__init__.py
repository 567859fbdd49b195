"""Preference models, their backbones, LoRA, attention, and converters from other formats."""
