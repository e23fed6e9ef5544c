"""Evaluation metrics, usable from Python on arrays or datasets."""
