"""What a user runs: inference, evaluation, cross-validation, blending, export."""
