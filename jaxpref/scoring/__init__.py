"""Judging predictions: metrics, calibration, baselines, reports."""
