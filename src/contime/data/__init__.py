"""Data generators and loaders for the experiments."""

from .delay import band_limited_noise

__all__ = ["band_limited_noise"]
