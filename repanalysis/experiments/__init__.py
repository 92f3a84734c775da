"""Experiments as data: spec files (TOML), the shipped presets, and the runs a spec plans."""

from .spec import Experiment, Overrides, PlannedRun, Spec, load_spec, parse, preset

__all__ = ["Experiment", "Overrides", "PlannedRun", "Spec", "load_spec", "parse", "preset"]
