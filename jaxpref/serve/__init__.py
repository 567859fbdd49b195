"""Using a trained model: loading runs and bundles, predicting."""
