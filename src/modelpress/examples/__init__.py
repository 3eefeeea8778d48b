"""Bundled example models, built in code (no download, deterministic weights)."""

from modelpress.examples.cnn import build_example_cnn

__all__ = ["build_example_cnn"]
