"""metric-harness: train, sweep and benchmark cross-batch deep metric learning methods."""

__version__ = "0.1.0"
