"""Experiments as data: a spec file (TOML) names the runs of a reproduction and the claims it judges.

A spec has a ``name``, a ``description``, a default ``dataset``, its ``seeds`` (a
number ``n``, seeds ``0..n-1``, or a list of seeds; ``quick_seeds`` under
``--quick``) and one table per experiment under ``[experiments.<name>]``::

    [experiments.depth]
    description = "what this experiment is for"
    claims = ["trains_well", "rsa_to_last_layer"]   # names of repanalysis.experiments.claims.CLAIMS
    compare = ["sg"]                           # the rules the claims compare with backprop (default: every other)
    tables = ["analysis"]                      # any of TABLES
    measures = ["linear_cka", "weight_frobenius"]   # the analysis measures (default: all)
    figures = ["depth"]                        # any of FIGURE_SETS
    rdm_depths = [5, 50]                       # depths whose RDM grids are drawn (figure set "depth")
    settings = { model = "mlp", width = 256, batch_norm = true }   # any TrainConfig field
    grid = { rule = ["backprop", "sg"], depth = [5, 50], activation = ["relu", "tanh"] }
    quick = { steps = 60, depth = [3, 6] }     # what --quick changes (a list replaces a grid axis)
    exclude = [{ rule = "backprop", depth = 50 }]   # combinations of grid values left out

    [experiments.depth.by.activation]          # settings that go with one value of a grid axis
    relu = { bn_beta_init = 2.0 }
    tanh = { bn_gamma_init = 0.5 }

An experiment may instead vary *arms*: named bundles of settings, each a way
of training the network (``grid = { arm = ["backprop", "slow_module"] }``
with ``[experiments.E.arms]`` ``slow_module = { rule = "sg", sg_lr = 1e-4 }``;
every arm names its rule). Like the rule, the arm does not make a cell.

A *recurrent* experiment sets ``model = "lstm"`` in its settings: its runs
take ``training.recurrent.RecurrentConfig`` fields (``task``, ``bptt``,
``hidden``, ...; its data set is its task, so the spec's ``dataset`` and
``--dataset`` do not apply), it makes the ``recurrent`` table and figure
(``analysis.recurrent``) and no other, and it judges no claims.

An experiment may choose each rule's settings on a validation split first
(``[experiments.E.select]``, see ``selection``); its runs then take the chosen
candidate's settings over the shared ones.

The runs of an experiment are every combination of its grid's axes (and the
seeds), each with the shared settings and those its grid values bring
(``by.<axis>.<value>``; values are matched as written, e.g. ``by.depth.50``), less
those that match every key of an ``exclude`` entry. The rule and ``stages``
(pipeline stages in processes, ``train --stages``; not the Dask workers of
``reproduce --workers``) say *how* a network is trained, so runs that differ only
in them form one cell and are compared with each other. Command-line overrides (``Overrides``)
replace grid axes: ``--depths``, ``--activations`` and ``--widths`` apply to
every experiment whose grid has that axis (an override no grid has is an
error); ``--seeds 0,1,2`` (these seeds), ``--seed-count N`` (the spec's first
``N`` seeds, continued past its last by the next integers) and ``--steps N``
apply to every experiment.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from repanalysis.config import MAX_SEED, TrainConfig
from repanalysis.errors import UserError, refuse_renamed
from repanalysis.runtime.outputs import safe_name
from repanalysis.training.recurrent import RecurrentConfig

from .selection import FIRST, Choice, Selection, parse_selection

TABLES = ("analysis", "probes", "linear", "explain", "recurrent")
FIGURE_SETS = ("standard", "tables", "depth", "explain", "recurrent")
#: The tables and figure sets of a recurrent experiment (``settings.model = "lstm"``), its only ones.
RECURRENT_PRODUCTS = ("recurrent",)
PRESETS = Path(__file__).resolve().parent / "presets"
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_RECURRENT_FIELDS = {f.name for f in dataclasses.fields(RecurrentConfig)} | {"model"}
_EXPERIMENT_KEYS = {"description", "claims", "tables", "measures", "figures", "rdm_depths", "settings", "grid",
                    "quick", "probe_folds", "by", "exclude", "arms", "select", "compare"}
#: The grid axis whose values name bundles of settings (``arms``), not one ``TrainConfig`` field.
ARM = "arm"
#: Grid axes that say how one network is trained; they do not make cells.
VARIANT_AXES = ("rule", "stages", ARM)
#: The most runs one spec may plan (a grid's size is the product of its axes' lengths, times the seeds).
MAX_RUNS = 10_000
#: The largest spec file read (a spec is a short text).
MAX_SPEC_BYTES = 1 << 20
#: Short forms of grid axes in run-file names.
_NAME_FORMS = {"depth": "d{}", "width": "w{}", "activation": "{}", "batch_norm": "bn{}", "lr": "lr{}", ARM: "{}",
               "bptt": "T{}"}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a spec: its experiment, resolved config and the grid values that name it."""

    experiment: str
    config: TrainConfig | RecurrentConfig
    axes: tuple[tuple[str, object], ...] = ()
    candidate: int | None = None  # a selection's candidate (``selection``), or None for the experiment's own run

    @property
    def name(self) -> str:
        c = self.config
        parts = [self.experiment, c.dataset, c.model]
        parts += [_NAME_FORMS.get(k, k + "{}").format(value_text(v)) for k, v in self.axes
                  if k not in ("rule", "dataset", "model", "task")]  # a recurrent run's data set is its task
        parts += [] if self.candidate is None else [f"c{self.candidate}"]
        return "_".join(parts + [c.rule, f"s{c.seed}"]) + ".h5"

    def __hash__(self) -> int:  # TrainConfig is mutable; a run is known by its file name
        return hash(self.name)

    @property
    def cell(self) -> tuple[tuple[str, object], ...]:
        """The grid values apart from how the network is trained (rule, stages): runs of one cell are
        compared with each other."""
        return tuple((k, v) for k, v in self.axes if k not in VARIANT_AXES)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    settings: dict
    grid: dict[str, list]
    claims: tuple[str, ...] = ()
    tables: tuple[str, ...] = ("analysis",)
    measures: tuple[str, ...] | None = None
    figures: tuple[str, ...] = ("standard",)
    rdm_depths: tuple[int, ...] = ()
    probe_folds: int = 5
    quick: dict = field(default_factory=dict)
    by: dict[str, dict[str, dict]] = field(default_factory=dict)
    exclude: tuple[dict, ...] = ()
    arms: dict[str, dict] = field(default_factory=dict)
    select: Selection | None = None
    compare: tuple[str, ...] | None = None  # the rules its claims compare with backprop (None: every other)

    @property
    def recurrent(self) -> bool:
        """Whether its runs are recurrent (``settings.model = "lstm"``: ``RecurrentConfig`` settings)."""
        return self.settings.get("model") == RecurrentConfig.model

    def cells(self) -> list[tuple[tuple[str, object], ...]]:
        """The grid values of every run of one seed, in grid order, less the excluded ones."""
        every = (tuple(zip(self.grid, values)) for values in itertools.product(*self.grid.values()))
        return [axes for axes in every if not self.excluded(axes)]

    def excluded(self, axes: tuple[tuple[str, object], ...]) -> bool:
        """Whether the grid values ``axes`` match every key of an ``exclude`` entry."""
        values = dict(axes)
        return any(all(k in values and values[k] == v for k, v in entry.items()) for entry in self.exclude)

    def settings_for(self, axes: tuple[tuple[str, object], ...]) -> dict:
        """The shared settings with those that the grid values ``axes`` bring (``by``, the arm's bundle),
        and the values themselves: every ``TrainConfig`` field of the run but the seed and data set."""
        out = dict(self.settings)
        for axis, value in axes:
            out.update(self.by.get(axis, {}).get(str(value).lower() if isinstance(value, bool) else str(value), {}))
        for axis, value in axes:
            out.update(self.arms[value] if axis == ARM else {axis: value})
        return out


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a spec (None: unchanged)."""

    depths: list[int] | None = None
    activations: list[str] | None = None
    widths: list[int] | None = None
    seeds: list[int] | None = None  # the seeds, replacing the spec's
    seed_count: int | None = None  # how many of the spec's seeds (``seeds_from``)
    steps: int | None = None
    dataset: str | None = None

    def seeds_from(self, seeds: tuple[int, ...]) -> tuple[int, ...]:
        """The seeds that replace the spec's ``seeds``: ``self.seeds``, or the first ``seed_count`` of them
        continued past their last by the next integers, or ``seeds`` unchanged."""
        if self.seeds is not None and self.seed_count is not None:
            raise UserError("give --seeds or --seed-count, not both")
        if self.seeds is not None:
            if isinstance(self.seeds, int):
                raise UserError(f"seeds takes a list of seeds; for the spec's first {self.seeds} give seed_count "
                                f"(--seed-count {self.seeds})")
            if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                    or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                               for s in self.seeds)):
                raise UserError(f"--seeds takes distinct seeds from 0 to 2**63 - 1, got {self.seeds}")
            return tuple(self.seeds)
        if self.seed_count is not None:
            if self.seed_count < 1:
                raise UserError(f"--seed-count must be at least 1, got {self.seed_count}")
            return tuple(seeds[: self.seed_count]) + tuple(
                range(max(seeds) + 1, max(seeds) + 1 + self.seed_count - len(seeds)))
        return seeds

    def axes(self) -> dict[str, list]:
        named = {"depth": self.depths, "activation": self.activations, "width": self.widths}
        return {k: v for k, v in named.items() if v is not None}


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    dataset: str
    seeds: tuple[int, ...]
    experiments: dict[str, Experiment] = field(default_factory=dict)
    source: str = ""
    quick_seeds: tuple[int, ...] | None = None
    preset: str | None = None  # the shipped preset's name, where it is one

    @property
    def selects(self) -> bool:
        """Whether an experiment chooses its rules' settings first (``candidate_runs``, ``selection``)."""
        return any(exp.select is not None for exp in self.experiments.values())

    def runs(self, quick: bool = False, overrides: Overrides | None = None,
             choice: Choice | None = None) -> list[PlannedRun]:
        """Every run, seed by seed (so a partial sweep has whole seeds), each experiment's grid in order.

        An experiment that selects takes each rule's chosen candidate from ``choice`` (required for it).
        """
        spec = self.applied(overrides or Overrides(), quick)
        _check_size(spec)
        planned = []
        for seed in spec.seeds:
            for exp in spec.experiments.values():
                for axes in exp.cells():
                    fields = {"dataset": spec.dataset, **exp.settings_for(axes), "seed": seed}
                    if exp.select is not None:
                        if choice is None:
                            raise ValueError(f"experiment {exp.name} selects its settings: plan it with a choice")
                        rule = fields.get("rule")
                        fields.update(choice.settings(exp.name, exp.select, rule, exp.select.key(axes, VARIANT_AXES)))
                    planned.append(PlannedRun(exp.name, _resolved(fields, f"{self.source}: experiments.{exp.name}"),
                                              axes))
        return _unique(planned, self.source)

    def check(self, quick: bool = False, overrides: Overrides | None = None) -> None:
        """Refuse (``UserError``) a spec or override whose runs, a selection's candidates among them, would not
        resolve; the runs of an experiment that selects are checked with each rule's first candidate."""
        self.candidate_runs(quick, overrides)
        self.runs(quick, overrides, choice=FIRST)

    def candidate_runs(self, quick: bool = False, overrides: Overrides | None = None) -> list[PlannedRun]:
        """The selections' runs: every candidate of every rule, on every selection seed, in every cell the
        selection tries (see ``selection``); none for a spec that does not select."""
        spec = self.applied(overrides or Overrides(), quick)
        planned = []
        for exp in spec.experiments.values():
            if exp.select is None:
                continue
            for seed in exp.select.seeds:
                for axes in exp.cells():
                    if not exp.select.tried(axes):
                        continue
                    fields = {"dataset": spec.dataset, **exp.settings_for(axes), "seed": seed}
                    for k, candidate in enumerate(exp.select.candidates[fields["rule"]]):
                        config = _resolved({**fields, **candidate}, f"{self.source}: {exp.name}.select")
                        planned.append(PlannedRun(exp.name, config, axes, candidate=k))
        return _unique(planned, self.source)

    def applied(self, overrides: Overrides, quick: bool) -> "Spec":
        """This spec with ``--quick`` and the command-line ``overrides`` applied."""
        experiments = {}
        for name, exp in self.experiments.items():
            settings, grid = dict(exp.settings), dict(exp.grid)
            fixed = {}  # settings that --quick or the command line decide, over by-values too
            for key, value in (exp.quick if quick else {}).items():
                if key in grid:
                    grid[key] = _list(value, f"quick.{key}", f"{self.source}: experiments.{name}")
                else:
                    fixed[key] = value
            grid.update({k: v for k, v in overrides.axes().items() if k in grid})
            if overrides.steps is not None:
                fixed["steps"] = overrides.steps
                grid.pop("steps", None)
            settings.update(fixed)
            by = {axis: {value: {k: v for k, v in keys.items() if k not in fixed} for value, keys in values.items()}
                  for axis, values in exp.by.items() if axis in grid}
            arms = {arm: {k: v for k, v in keys.items() if k not in fixed} for arm, keys in exp.arms.items()}
            select = None if exp.select is None else _select_in(exp.select, grid, set(fixed))
            experiments[name] = dataclasses.replace(exp, settings=settings, grid=grid, by=by, arms=arms,
                                                    select=select)
        unused = [k for k in overrides.axes() if not any(k in e.grid for e in experiments.values())]
        if unused:
            raise UserError(f"--{unused[0]}s: no experiment of the spec {self.name!r} varies {unused[0]} "
                            f"(its grids vary {', '.join(sorted({k for e in experiments.values() for k in e.grid}))})")
        seeds = overrides.seeds_from((self.quick_seeds or self.seeds) if quick else self.seeds)
        for name, exp in experiments.items():
            shared = sorted(set(seeds) & set(exp.select.seeds if exp.select is not None else ()))
            if shared:
                raise UserError(f"{self.source}: experiments.{name}: seed(s) {', '.join(map(str, shared))} "
                                "would be both selection and reported seeds; the test split must be reported "
                                "on seeds the selection never saw")
        return dataclasses.replace(self, experiments=experiments, seeds=tuple(seeds),
                                   dataset=overrides.dataset or self.dataset)


def _select_in(select: Selection, grid: dict, fixed: set) -> Selection:
    """``select`` for the grid as ``--quick`` and the command line left it: candidates without the settings
    they fixed, and cells without grid values that are gone (an axis left with none is tried at the grid's
    last value)."""
    cells = {axis: tuple(v for v in values if v in grid[axis]) or (grid[axis][-1],)
             for axis, values in select.cells.items()}
    return dataclasses.replace(select.without(fixed), cells=cells)


def _unique(planned: list[PlannedRun], source: str) -> list[PlannedRun]:
    """``planned``, each run's file name checked (``_check_names``) and none shared."""
    for run in planned:
        _check_names(run, f"{source}: experiments.{run.experiment}")
    names = [r.name for r in planned]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: two runs would share a file name; give every grid value once")
    return planned


def _check_size(spec: "Spec") -> None:
    """Refuse a spec that would plan more than ``MAX_RUNS`` runs, saying how many, before planning any."""
    n = sum(math.prod(len(v) for v in exp.grid.values()) for exp in spec.experiments.values()) * len(spec.seeds)
    if n > MAX_RUNS:
        raise UserError(f"{spec.source}: this spec would make up to {n:,} runs ({len(spec.seeds)} seed(s) of "
                        f"{', '.join(f'{e.name}: ' + ' x '.join(map(str, map(len, e.grid.values()))) for e in spec.experiments.values())}"
                        f" grid values); at most {MAX_RUNS:,} are allowed: split it into smaller specs")


def value_text(value) -> str:
    """A grid value as it appears in file names: a list as its items joined by ``-``."""
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_names(run: PlannedRun, where: str) -> None:
    """Refuse a run whose file name would not stay inside the run folder (a spec is a file people share)."""
    for key, value in (("dataset", run.config.dataset), ("model", run.config.model), *run.axes):
        safe_name(value_text(value), f"{where}: {key} value", part=True)
    safe_name(run.name, f"{where}: run-file name")


def _resolved(fields: dict, where: str) -> TrainConfig | RecurrentConfig:
    """The resolved config of a run's fields: a ``RecurrentConfig`` for ``model = "lstm"`` (which takes the
    spec's data set from its task; the settings of a language model name no data set)."""
    try:
        if fields.get("model") == RecurrentConfig.model:
            unknown = sorted(set(fields) - _RECURRENT_FIELDS - {"dataset"})
            if unknown:
                raise UserError(f"unknown setting(s) {', '.join(unknown)} for model = \"lstm\"; its settings are "
                                f"RecurrentConfig fields ({', '.join(sorted(_RECURRENT_FIELDS))})")
            return RecurrentConfig(**{k: v for k, v in fields.items() if k not in ("model", "dataset")}).resolved()
        return TrainConfig(**fields).resolved()
    except (TypeError, UserError) as err:
        raise UserError(f"{where}: {err}") from None


def _list(value, key: str, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {key} must be a non-empty list, got {value!r}")
    return value


def _check_fields(keys, where: str) -> None:
    """Refuse a setting that is neither a ``TrainConfig`` nor a ``RecurrentConfig`` field (which of them a
    run takes is checked when it resolves, ``_resolved``)."""
    unknown = sorted(set(keys) - _FIELDS - _RECURRENT_FIELDS)
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(unknown)}; settings are TrainConfig fields "
                        f"({', '.join(sorted(_FIELDS))})")


def _check_experiment_types(table: dict, where: str) -> None:
    """Refuse an experiment key (other than the settings) of the wrong type, naming it and the type it takes."""
    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def strings(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    checks = {"description": (lambda v: isinstance(v, str), "a string"),
              "claims": (strings, "a list of strings"), "tables": (strings, "a list of strings"),
              "measures": (strings, "a list of strings"), "figures": (strings, "a list of strings"),
              "rdm_depths": (lambda v: isinstance(v, list) and all(integer(x) and x >= 1 for x in v),
                             "a list of positive integers"),
              "probe_folds": (lambda v: integer(v) and v >= 2, "an integer of at least 2")}
    for key, (ok, kind) in checks.items():
        if key in table and not ok(table[key]):
            raise UserError(f"{where}: {key} must be {kind}, got {table[key]!r}")


def _experiment(name: str, table: dict, source: str) -> Experiment:
    from repanalysis.analysis.explain import NEEDS as EXPLAIN_NEEDS
    from repanalysis.analysis.runs import MEASURES
    from repanalysis.analysis.runs import RENAMED as RENAMED_MEASURES
    from repanalysis.experiments.claims import CLAIMS
    from repanalysis.experiments.claims import RENAMED as RENAMED_CLAIMS

    where = f"{source}: experiments.{name}"
    safe_name(name, f"{source}: experiment name")
    unknown = sorted(set(table) - _EXPERIMENT_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; an experiment has "
                        f"{', '.join(sorted(_EXPERIMENT_KEYS))}")
    settings, grid, quick = table.get("settings", {}), table.get("grid", {}), table.get("quick", {})
    for part, keys in (("settings", settings), ("grid", grid), ("quick", quick)):
        if not isinstance(keys, dict):
            raise UserError(f"{where}: {part} must be a table")
        _check_fields(set(keys) - {ARM}, f"{where}.{part}")
    if "seed" in grid or "seed" in settings:
        raise UserError(f"{where}: seeds are set by the spec's 'seeds' (and --seeds or --seed-count), not per experiment")
    grid = {k: _list(v, f"grid.{k}", where) for k, v in grid.items()}
    arms = _arms(table.get("arms", {}), grid, where)
    by = table.get("by", {})
    if not isinstance(by, dict) or not all(isinstance(v, dict) for v in by.values()):
        raise UserError(f"{where}: by must be a table of tables, e.g. [experiments.{name}.by.activation] "
                        "with relu = {{ bn_beta_init = 2.0 }}")
    for axis, values in by.items():
        if axis not in grid:
            raise UserError(f"{where}: by.{axis}: {axis!r} is not an axis of the grid "
                            f"({', '.join(grid) or 'none'})")
        for value, keys in values.items():
            if not isinstance(keys, dict):
                raise UserError(f"{where}: by.{axis}.{value} must be a table of settings")
            _check_fields(keys, f"{where}.by.{axis}.{value}")
            clash = sorted(set(keys) & (set(grid) | {"seed"}))
            if clash:
                raise UserError(f"{where}: by.{axis}.{value} sets {', '.join(clash)}, which the grid varies")
    exclude = table.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise UserError(f"{where}: exclude must be a list of tables of grid values, e.g. "
                        "exclude = [{ rule = \"backprop\", stages = 2 }]")
    for entry in exclude:
        strange = sorted(set(entry) - set(grid))
        if strange:
            raise UserError(f"{where}: exclude names {', '.join(strange)}, which the grid does not vary "
                            f"({', '.join(grid) or 'none'})")
    if "rule" not in grid and "rule" not in settings and not arms:
        raise UserError(f"{where}: name the rule(s), e.g. grid = {{ rule = [\"backprop\", \"sg\"] }}")
    _check_experiment_types(table, where)
    refuse_renamed(table.get("claims", ()), RENAMED_CLAIMS, f"{where}: claim")
    refuse_renamed(table.get("measures", ()), RENAMED_MEASURES, f"{where}: measure")
    for key, allowed in (("claims", CLAIMS), ("tables", TABLES), ("figures", FIGURE_SETS), ("measures", MEASURES)):
        bad = sorted(set(table.get(key, ())) - set(allowed))
        if bad:
            raise UserError(f"{where}: unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")
    recurrent = settings.get("model") == RecurrentConfig.model
    for key in ("tables", "figures"):
        chosen = set(table.get(key, ()))
        if recurrent and chosen - set(RECURRENT_PRODUCTS) or not recurrent and chosen & set(RECURRENT_PRODUCTS):
            raise UserError(f"{where}: {key} {', '.join(RECURRENT_PRODUCTS)} is for recurrent runs "
                            "(settings.model = \"lstm\"), and a recurrent experiment has no other")
    if recurrent and table.get("claims"):
        raise UserError(f"{where}: the claims judge feed-forward nets; a recurrent experiment has none")
    if "explain" in table.get("tables", ()):
        missing = sorted(set(EXPLAIN_NEEDS) - set(table.get("measures", MEASURES)))
        if "analysis" not in table.get("tables", ()) or missing:
            raise UserError(f"{where}: the explain table reads the analysis table"
                            + (f" with the measures {', '.join(missing)}" if missing else "")
                            + "; add them (tables = [\"analysis\", \"explain\"])")
    return Experiment(
        name, str(table.get("description", "")), settings, grid, tuple(table.get("claims", ())),
        tuple(table.get("tables", RECURRENT_PRODUCTS if recurrent else ("analysis",))),
        tuple(table["measures"]) if "measures" in table else None,
        tuple(table.get("figures", RECURRENT_PRODUCTS if recurrent else ("standard",))),
        tuple(table.get("rdm_depths", ())),
        table.get("probe_folds", 5), quick, by, tuple(exclude), arms,
        None if "select" not in table else parse_selection(table["select"], grid, settings, where, _check_fields),
        None if "compare" not in table else tuple(map(str, _list(table["compare"], "compare", where))),
    )


def _arms(arms, grid: dict, where: str) -> dict[str, dict]:
    """The ``arms`` tables an ``arm`` grid axis names, checked: each a table of settings naming its rule,
    none setting what the grid varies."""
    if not isinstance(arms, dict) or not all(isinstance(v, dict) for v in arms.values()):
        raise UserError(f"{where}: arms must be a table of tables, e.g. [experiments.E.arms] "
                        "with slow = {{ rule = \"sg\", sg_lr = 1e-4 }}")
    if bool(arms) != (ARM in grid):
        raise UserError(f"{where}: arms and grid.{ARM} go together: the grid's {ARM} axis names arms tables")
    for name, keys in arms.items():
        _check_fields(keys, f"{where}.arms.{name}")
        if "rule" not in keys:
            raise UserError(f"{where}: arms.{name} must name its rule, e.g. rule = \"sg\"")
        clash = sorted(set(keys) & (set(grid) | {"seed"}))
        if clash:
            raise UserError(f"{where}: arms.{name} sets {', '.join(clash)}, which the grid varies")
    unknown = [str(v) for v in grid.get(ARM, []) if v not in arms]
    if unknown:
        raise UserError(f"{where}: grid.{ARM} names {', '.join(unknown)}, which arms does not define "
                        f"({', '.join(arms) or 'none'})")
    return arms


def parse(text: str, source: str = "<spec>") -> Spec:
    """The ``Spec`` in TOML ``text``; ``UserError`` naming ``source`` for anything wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{source}: not valid TOML ({err})") from None
    unknown = sorted(set(data) - {"name", "description", "dataset", "seeds", "quick_seeds", "experiments"})
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; a spec has name, description, dataset, "
                        "seeds and [experiments.<name>] tables")
    experiments = data.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise UserError(f"{source}: no [experiments.<name>] table")
    seeds = _seeds(data.get("seeds", 3), "seeds", source)
    quick_seeds = None if data.get("quick_seeds") is None else _seeds(data["quick_seeds"], "quick_seeds", source)
    name = safe_name(data["name"], f"{source}: name") if "name" in data else Path(source).stem
    spec = Spec(name, str(data.get("description", "")),
                str(data.get("dataset", "digits")), seeds,
                {name: _experiment(name, table, source) for name, table in experiments.items()}, source,
                quick_seeds)
    for quick in (False, True):  # every config must resolve, with and without --quick
        spec.check(quick)
    _check_claims(spec)
    return spec


def _check_claims(spec: Spec) -> None:
    """Refuse an experiment whose claims can judge none of the rules it compares with backprop."""
    from repanalysis.experiments.claims import check_judgeable, variant

    runs = spec.runs(choice=FIRST)
    for name, exp in spec.experiments.items():
        if exp.recurrent:  # no claims (``_experiment``)
            continue
        rules = list(dict.fromkeys(variant(r.config) for r in runs if r.experiment == name))
        check_judgeable(exp.claims, rules, exp.compare, f"{spec.source}: experiments.{name}")


def _seeds(value, key: str, source: str) -> tuple[int, ...]:
    """A spec's seeds: a number ``n`` (seeds ``0..n-1``) or a list of distinct seeds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if (isinstance(value, list) and value and len(set(value)) == len(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        return tuple(value)
    raise UserError(f"{source}: {key} must be a positive number of seeds or a list of distinct seeds, "
                    f"got {value!r}")


def load_spec(path) -> Spec:
    """The spec in the TOML file ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read the spec ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < MAX_SPEC_BYTES - 3:  # not a character cut at the end of what was read
            raise UserError(f"{path}: not a text file (a spec is TOML, in UTF-8)") from None
    if len(data) > MAX_SPEC_BYTES:
        raise UserError(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB; a spec is a short TOML text file")
    return parse(text, str(path))


def preset_names() -> list[str]:
    """The names of the shipped specs (``presets/<name>.toml``), sorted."""
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def preset(name: str) -> Spec:
    """A shipped spec (``presets/<name>.toml``; copy one to start your own)."""
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(names)}")
    return dataclasses.replace(load_spec(PRESETS / f"{name}.toml"), preset=name)
