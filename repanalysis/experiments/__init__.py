"""Experiments: what is run, judged and reported.

``spec``: spec files (TOML), the shipped presets and the runs a spec plans; ``selection``: choosing a
setting from candidate runs; ``sweep``: a spec's runs as tasks (``sweep()``: train them and no more);
``reproduce``: the main job (train, analyse, probe, judge, draw, report); ``claims``: the paper's claims;
``report``: the report.
"""

from .spec import Experiment, Overrides, PlannedRun, Spec, load_spec, parse, preset

__all__ = ["Experiment", "Overrides", "PlannedRun", "Spec", "load_spec", "parse", "preset"]
