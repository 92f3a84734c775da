"""repanalysis: train with backprop, synthetic gradients and related rules; record; explain."""

__version__ = "0.1.0"
