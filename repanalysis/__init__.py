"""repanalysis: train with backprop, synthetic gradients and related rules; record; explain.

``from repanalysis import Recorder`` records your own model from your own loop
(``repanalysis.runfile.recorder``); it is imported on first use, so the command line
starts without torch where it does not need it.
"""

__version__ = "0.1.0"
__all__ = ["Recorder"]


def __getattr__(name):
    if name == "Recorder":
        from repanalysis.runfile.recorder import Recorder

        return Recorder
    raise AttributeError(f"module 'repanalysis' has no attribute {name!r}")
