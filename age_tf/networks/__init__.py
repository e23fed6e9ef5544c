"""Encoder and generator architectures, one module per family."""
