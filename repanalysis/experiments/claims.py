"""The claims of the 2017 paper (and claim U, asynchrony), each judged from per-seed values over seeds (and depths).

A claim has one or more *parts*; a part names a per-seed value (usually the
difference of one quantity between backprop and a compared rule, in runs of
the same seed and grid cell, or a value tested against a threshold) and the
direction it must take. The rules a claim compares with backprop are the
experiment's ``compare`` list (default: every rule of its grid but backprop)
among those the claim applies to (``ClaimSpec.rules``); a part that speaks of
the compared rule (``{rule}`` in its label) is judged once per compared rule.
For every *scope* (a cell of the experiment's grid, e.g. "depth 50, relu")
the part's values give an effect with a t-interval and a p-value
(``stats.paired_effect``); where cells differ only in depth, a *pooled* scope
per remaining cell ("relu, all depths") weighs every depth the same. The
verdicts of one claim are made together: its parts and scopes are one family
whose p-values are adjusted by Benjamini–Hochberg (``stats.verdicts``), and
no verdict rests on fewer than ``stats.MIN_SEEDS`` seeds.

*Regions*: where the compared rule's error signal reaches only some layers
(sg: the layers up to its module), the layer-wise claims (4c, 4d) are judged
separately for the layers with the rule's signal ("below the module") and
for those with the true gradient ("above the module", the last layer aside
for 4c); the split is read off the compared rule's run files (the layers
that record a ``signal``), and applied to backprop's runs of the same cell
alike.

Per-run quantities (``quantities``; one row per run and quantity, written to
``tables/<experiment>_quantities.csv``):

- ``test_acc``: the final test accuracy (the run's last evaluation);
- ``train_loss_area``, ``steps_to_test_acc_95``: from the analysis table
  (``analysis.runs``: the mean training loss over the run; the first evaluated
  step at 95% test accuracy, none for a run that never got there);
- ``rsa_to_last_layer_euclidean``, ``rsa_to_last_layer_correlation``: the mean, over every
  layer below the last, of that analysis measure at the last checkpoint; and
  ``<quantity>|<rule>|below`` / ``|above``: the same over one region of the
  compared rule ``<rule>``;
- ``weight_norm_slope``: the least-squares slope of ``weight_frobenius_relative``
  (‖W_T‖/‖W_0‖ at the last checkpoint) against layer position scaled to
  [0, 1], the input layer ``h1`` left out (its weight reads the raw inputs);
- ``cka_to_other_backprop``: the mean over layers and over backprop runs of
  the *other* seeds of the same cell of linear CKA at the last checkpoint
  (runs of one seed share initial weights and batches, which would inflate
  it); for a backprop run it is the seed-vs-seed ceiling; ``cka_null``: the
  95th percentile of the same mean under shuffled sample correspondence
  (``stats.permutation_null``), the level that shows no shared structure.
  Both from the *pair table* (``pairs``; ``tables/<experiment>_pairs.csv``):
  one row per run, backprop run of another seed of its cell, and layer;
- ``grad_cosine_late``: the mean, over every layer with an error signal and
  over the checkpoints of the second half of the run (``_late_mean``), of
  ``grad_cosine`` (the rule's signal against the true gradient, per-sample
  cosine). Not the last checkpoint alone: a cDNI net's alignment moves by
  about ±0.1 between checkpoints 150 steps apart, more than the effects
  compared.

Claim 4d pools pairs of runs of different seeds, so its per-seed values are
not independent (a backprop run enters the pairs of every other seed): its
values are the jackknife pseudo-values over seeds (``stats.jackknife_pseudovalues``)
of ``ceiling − rule`` (mean CKA over backprop pairs minus mean CKA over
(rule, other-seed backprop) pairs), so its interval resamples what is
independent, the seeds; the ceiling's excess over the permutation null is a
part of its own.

A run's ``rule`` in these tables is its *variant*: the rule's name, with the
number of pipeline stages for a run trained in stages (``"dni, 2 stages"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from repanalysis.errors import UserError
from repanalysis.measures import stats
from repanalysis.runfile.hdf5 import RunFile

QUANTITY_COLUMNS = ("run", "experiment", "rule", "seed", "scope", "pool", "quantity", "value")
PAIR_COLUMNS = ("run", "rule", "seed", "scope", "pool", "reference_seed", "layer", "position", "cka", "null")
NULL_PERMUTATIONS = 50
REGIONS = {"below": "below the module", "above": "above the module"}


@dataclass
class Context:
    """What the claims of one experiment read: its runs (``PlannedRun`` → path), tables, and the rules it
    compares with backprop."""

    experiment: str
    runs: dict  # PlannedRun -> Path of a complete run file
    analysis: pd.DataFrame | None = None
    linear: pd.DataFrame | None = None
    quantities: pd.DataFrame | None = None
    pairs: pd.DataFrame | None = None
    compare: tuple[str, ...] | None = None  # None: every variant of the runs but backprop

    def compared(self) -> tuple[str, ...]:
        if self.compare is not None:
            return tuple(self.compare)
        found = dict.fromkeys(variant(p.config) for p in self.runs)
        if self.quantities is not None and not self.quantities.empty:
            found.update(dict.fromkeys(self.quantities["rule"]))
        return tuple(r for r in found if r != "backprop")


@dataclass(frozen=True)
class Part:
    """One testable statement: ``direction·(effect − threshold) > 0``, from ``values(context, rule)``.

    ``values`` returns a frame with columns ``scope``, ``pool`` (None: not
    pooled), ``seed`` and ``value`` (the paired difference, or the value
    tested) for one compared ``rule``; a ``label`` with ``{rule}`` is judged
    once per compared rule, any other once (with ``rule`` None).
    """

    label: str
    values: Callable[[Context, str | None], pd.DataFrame]
    direction: int = 1
    threshold: float = 0.0
    digits: int = 3
    region: str | None = None  # judged only for compared rules with layers in this region (``regions``)

    @property
    def per_rule(self) -> bool:
        return "{rule}" in self.label


@dataclass(frozen=True)
class ClaimSpec:
    number: str
    statement: str
    measurement: str
    caveat: str
    parts: tuple[Part, ...]
    shows: tuple[str, ...] = ()  # quantities whose mean ± std per scope and rule the report lists
    rules: tuple[str, ...] | None = None  # the rules it can judge (None: any but backprop)
    needs_backprop: bool = True

    def judges(self, rules) -> list[str]:
        """Which of ``rules`` (variants) this claim judges."""
        return [r for r in rules if r != "backprop" and (self.rules is None or r in self.rules)]


@dataclass
class PartResult:
    label: str
    claim: str  # "effect > 0" etc.
    rows: list[tuple[str, stats.Effect, str]] = field(default_factory=list)  # (scope, effect, verdict): cells
    pooled: list[tuple[str, stats.Effect, str]] = field(default_factory=list)  # the same over pools of cells
    pool_of: dict[str, str] = field(default_factory=dict)  # cell scope -> its pool's scope
    digits: int = 3


@dataclass
class ClaimResult:
    key: str
    spec: ClaimSpec
    parts: list[PartResult]
    details: list[str] = field(default_factory=list)

    @property
    def family(self) -> int:
        """How many tests the claim's verdicts were adjusted over (those with enough seeds)."""
        return sum(1 for part in self.parts for _, e, _ in part.rows + part.pooled if e.n and e.enough)


def scope_label(cell) -> str:
    """``"depth 50, relu"`` from a ``PlannedRun.cell`` (``"all runs"`` for an empty cell)."""
    words = {"depth": "depth {}", "width": "width {}", "activation": "{}", "dataset": "{}", "model": "{}"}
    parts = [words.get(k, k + " {}").format(v) for k, v in cell]
    return ", ".join(parts) or "all runs"


def pool_label(cell) -> str | None:
    """The pooled scope of a cell whose grid varies depth: the cell without its depth."""
    rest = [(k, v) for k, v in cell if k != "depth"]
    return (scope_label(rest) if rest else "all") + ", all depths" if any(k == "depth" for k, _ in cell) else None


def check_judgeable(claims, rules, compare, where: str) -> None:
    """Refuse (one line) an experiment whose claims cannot judge any of its ``rules`` (``compare``: the
    rules it names, or None for every rule but backprop)."""
    unknown = sorted(set(compare or ()) - set(rules))
    if unknown:
        raise UserError(f"{where}: compare names {', '.join(unknown)}, which the grid does not train "
                        f"({', '.join(rules)})")
    compared = list(compare) if compare is not None else [r for r in rules if r != "backprop"]
    for key in claims:
        spec = CLAIMS[key]
        if spec.needs_backprop and "backprop" not in rules:
            raise UserError(f"{where}: claim {key} compares rules with backprop, which the grid does not train")
        if not spec.judges(compared):
            raise UserError(f"{where}: claim {key} judges {', '.join(spec.rules or ('a rule other than backprop',))}"
                            f", which this experiment does not compare ({', '.join(compared) or 'nothing'}); "
                            "name the rules to compare with compare = [...] or drop the claim")


# -- quantities ----------------------------------------------------------------------

def variant(config) -> str:
    """The rule as the claims compare it: ``"dni"``, or ``"dni, 2 stages"`` for a run in 2 stage processes."""
    return config.rule if config.stages == 1 else f"{config.rule}, {config.stages} stages"


def _measure(analysis: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if analysis is None or analysis.empty:
        return pd.DataFrame(columns=["run_a", "layer_a", "step_a", "value"])
    rows = analysis[analysis["measure"] == name]
    return rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))


def _late_mean(rows: pd.DataFrame) -> pd.Series:
    """Per run (``run_a``), the mean ``value`` over its layers and its checkpoints of the second half of
    training (``step_a`` at least half its last checkpoint's step); NaN values are left out."""
    late = rows[rows["step_a"] >= rows.groupby("run_a")["step_a"].transform("max") / 2]
    return late.groupby("run_a")["value"].mean()


def _slope_over_layers(rows: pd.DataFrame) -> float:
    """Least-squares slope of ``value`` against layer position (``layer_a`` = ``h<k>``) scaled to [0, 1]."""
    positions = rows["layer_a"].str[1:].astype(int).to_numpy()
    if len(positions) < 2:
        return math.nan
    scaled = (positions - positions.min()) / max(1, positions.max() - positions.min())
    return float(np.polyfit(scaled, rows["value"].to_numpy(), 1)[0])


def _final_test_acc(path) -> float:
    with RunFile(path) as run:
        acc = run.evals.get("test_acc", np.zeros(0))
        return float(acc[-1]) if len(acc) else math.nan


def _last_activations(path) -> dict[str, tuple[int, np.ndarray]]:
    """Layer -> (its position in the model, its activations at the last checkpoint)."""
    with RunFile(path) as run:
        return {layer: (run.layer_info(layer)["position"], run.activations(layer, -1)) for layer in run.layers}


class _PermutedGram:
    """A centred Gram matrix that ``stats.permutation_null`` permutes as it would permute the samples:
    ``gram[π]`` is the Gram matrix of the rows ``y[π]`` (rows and columns permuted), with no product remade."""

    def __init__(self, gram: np.ndarray):
        self.gram = gram

    def __len__(self) -> int:
        return len(self.gram)

    def __getitem__(self, order: np.ndarray) -> np.ndarray:
        return self.gram[np.ix_(order, order)]


def _cells(context: Context) -> dict[tuple, dict[str, dict[int, Path]]]:
    """cell -> variant -> seed -> run file."""
    cells: dict[tuple, dict[str, dict[int, Path]]] = {}
    for planned, path in context.runs.items():
        cells.setdefault(planned.cell, {}).setdefault(variant(planned.config), {})[planned.config.seed] = path
    return cells


def pairs(context: Context) -> pd.DataFrame:
    """The pair table: per run, backprop run of another seed of its cell, and layer, linear CKA of the
    layer at the last checkpoint and its permutation null (columns ``PAIR_COLUMNS``).

    Layer by layer, each run's centred Gram matrix is made once and shared by its pairs and their
    permutations (where linear CKA takes its Gram route; else ``linear_cka`` pair by pair).
    """
    from repanalysis.measures import linear_cka
    from repanalysis.measures._arrays import collected
    from repanalysis.measures.similarity import centred_linear_gram, linear_cka_from_grams

    rows = []
    for cell, by_variant in _cells(context).items():
        backprop = by_variant.get("backprop", {})
        if len(backprop) < 2:
            continue
        pairs = [(rule, seed, path, other, reference) for rule, by_seed in by_variant.items()
                 for seed, path in by_seed.items() for other, reference in backprop.items() if other != seed]
        acts = {path: _last_activations(path) for pair in pairs for path in (pair[2], pair[4])}
        layers = list(dict.fromkeys(layer for arrays in acts.values() for layer in arrays))
        with collected():  # dropped: small-n inflation hits every pair alike
            for layer in layers:  # runs may record different layers
                grams: dict[Path, np.ndarray] = {}

                def gram(path: Path) -> np.ndarray:
                    if path not in grams:
                        grams[path] = centred_linear_gram(acts[path][layer][1])
                    return grams[path]

                for rule, seed, path, other, reference in pairs:
                    if layer not in acts[path] or layer not in acts[reference]:
                        continue
                    (position, x), (_, y) = acts[path][layer], acts[reference][layer]
                    if x.shape[1] + y.shape[1] >= x.shape[0]:  # linear_cka's own choice of its Gram route
                        k, l = gram(path), gram(reference)
                        value = linear_cka_from_grams(k, l)
                        null = stats.permutation_null(linear_cka_from_grams, k, _PermutedGram(l),
                                                      permutations=NULL_PERMUTATIONS, seed=seed)
                    else:
                        value = linear_cka(x, y)
                        null = stats.permutation_null(linear_cka, x, y, permutations=NULL_PERMUTATIONS, seed=seed)
                    rows.append((str(path), rule, seed, scope_label(cell), pool_label(cell), other, layer, position,
                                 value, null))
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def _signalled(path) -> list[str]:
    with RunFile(path) as run:
        return [layer for layer in run.layers if run.has(layer, "signal")]


def regions(context: Context) -> dict[tuple[str, str], dict[str, str]]:
    """``(scope, compared rule)`` -> ``{layer: "below" | "above"}``: the layers with the rule's signal
    (read off one of its run files in that cell) and the others."""
    out = {}
    for cell, by_variant in _cells(context).items():
        for rule, by_seed in by_variant.items():
            if rule == "backprop" or not by_seed:
                continue
            path = next(iter(by_seed.values()))
            with RunFile(path) as run:
                layers = run.layers
            signalled = set(_signalled(path))
            out[(scope_label(cell), rule)] = {layer: "below" if layer in signalled else "above" for layer in layers}
    return out


def region_quantity(name: str, rule: str, region: str) -> str:
    """The name of ``name`` taken over one ``region`` of the compared ``rule``."""
    return f"{name}|{rule}|{region}"


def quantities(context: Context, *, cka: bool = True) -> pd.DataFrame:
    """One row per run and quantity (see the module docstring); ``cka``: the CKA quantities, from
    ``context.pairs``."""
    rows = []
    analysis = context.analysis
    per_run: dict[str, dict[str, float]] = {}
    split = regions(context)
    scope_of = {str(path): scope_label(planned.cell) for planned, path in context.runs.items()}
    for measure in ("train_loss_area", "steps_to_test_acc_95"):
        for _, r in _measure(analysis, measure).dropna(subset=["value"]).iterrows():  # NaN: a level never reached
            per_run.setdefault(str(r["run_a"]), {})[measure] = float(r["value"])
    for measure in ("rsa_to_last_layer_euclidean", "rsa_to_last_layer_correlation"):
        for run, group in _measure(analysis, measure).groupby("run_a"):
            found = per_run.setdefault(str(run), {})
            found[measure] = float(group["value"].mean())
            for (scope, rule), layers in split.items():
                if scope != scope_of.get(str(run)):
                    continue
                for region in REGIONS:
                    values = group[group["layer_a"].map(layers) == region]["value"]
                    if len(values):
                        found[region_quantity(measure, rule, region)] = float(values.mean())
    for run, value in _late_mean(_measure(analysis, "grad_cosine")).items():
        per_run.setdefault(str(run), {})["grad_cosine_late"] = float(value)
    relative = _measure(analysis, "weight_frobenius_relative")
    if not relative.empty:
        relative = relative[relative["step_a"] == relative.groupby("run_a")["step_a"].transform("max")]
        for run, group in relative.groupby("run_a"):
            slope = _slope_over_layers(group[group["layer_a"] != "h1"])
            if np.isfinite(slope):
                per_run.setdefault(str(run), {})["weight_norm_slope"] = slope
    if cka and context.pairs is not None and not context.pairs.empty:
        for run, group in context.pairs.groupby("run"):
            found = per_run.setdefault(str(run), {})
            found["cka_to_other_backprop"], found["cka_null"] = float(group["cka"].mean()), float(group["null"].mean())
    for planned, path in context.runs.items():
        c = planned.config
        found = {"test_acc": _final_test_acc(path), **per_run.get(str(path), {})}
        for name, value in found.items():
            rows.append((str(path), context.experiment, variant(c), c.seed, scope_label(planned.cell),
                         pool_label(planned.cell), name, value))
    return pd.DataFrame(rows, columns=list(QUANTITY_COLUMNS))


# -- parts built from quantities -----------------------------------------------------

def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["scope", "pool", "seed", "value"])


def rule_difference(quantity: str, rule_a: str = "backprop", rule_b: str | None = None,
                    region: str | None = None) -> Callable[[Context, str | None], pd.DataFrame]:
    """Per scope and seed: ``quantity(rule_a) − quantity(rule_b)`` (runs of one seed and cell); ``rule_b``
    None: the compared rule; ``region``: the quantity over that region of the compared rule."""

    def values(context: Context, rule: str | None) -> pd.DataFrame:
        b = rule_b or rule
        name = quantity if region is None else region_quantity(quantity, b, region)
        q = context.quantities
        q = q[q["quantity"] == name]
        wide = q.pivot_table(index=["scope", "pool", "seed"], columns="rule", values="value", dropna=False)
        if rule_a not in wide or b not in wide:
            return _frame([])
        out = (wide[rule_a] - wide[b]).rename("value").reset_index()
        return out.dropna(subset=["value"])

    return values


def rule_value(quantity: str, rule: str | None = None) -> Callable[[Context, str | None], pd.DataFrame]:
    """Per scope and seed: ``quantity`` of ``rule``'s run (None: the compared rule), tested against the
    threshold."""

    def values(context: Context, compared: str | None) -> pd.DataFrame:
        q = context.quantities
        q = q[(q["quantity"] == quantity) & (q["rule"] == (rule or compared))]
        return q[["scope", "pool", "seed", "value"]].dropna(subset=["value"])

    return values


def _pair_means(context: Context, rule: str | None, region: str | None) -> dict[str, pd.DataFrame]:
    """Per scope: the mean CKA (and null) over the region's layers of every (run, reference seed) pair."""
    table = context.pairs
    if table is None or table.empty:
        return {}
    split = regions(context)
    out = {}
    for scope, group in table.groupby("scope", sort=False):
        if region is not None:
            layers = split.get((scope, rule))
            if layers is None:
                continue
            group = group[group["layer"].map(layers) == region]
        if not group.empty:
            out[scope] = group.groupby(["rule", "seed", "reference_seed", "pool"], dropna=False)[["cka", "null"]].mean()
    return out


def _jackknife(context: Context, rule: str | None, region: str | None, statistic) -> pd.DataFrame:
    """Per scope, the jackknife pseudo-values over seeds of ``statistic(pair means, seeds)``."""
    rows = []
    for scope, means in _pair_means(context, rule, region).items():
        seeds = sorted({s for r, s, _, _ in means.index if r == "backprop"}
                       & ({s for r, s, _, _ in means.index if r == rule} if rule else {s for _, s, _, _ in means.index}))
        pool = next(iter(means.index))[3]
        for seed, value in stats.jackknife_pseudovalues(lambda ds: statistic(means, ds), seeds).items():
            rows.append((scope, None if pd.isna(pool) else pool, seed, value))
    return _frame(rows)


def _mean_over_pairs(means: pd.DataFrame, rule: str, seeds, column: str = "cka") -> float:
    keep = [(r, s, o, p) for r, s, o, p in means.index if r == rule and s in seeds and o in seeds and s != o]
    return float(means.loc[keep, column].mean()) if keep else math.nan


def _ceiling_minus_rule(region: str):
    def values(context: Context, rule: str | None) -> pd.DataFrame:
        return _jackknife(context, rule, region, lambda means, seeds: (
            _mean_over_pairs(means, "backprop", seeds) - _mean_over_pairs(means, rule, seeds)))
    return values


def _ceiling_above_null(context: Context, rule: str | None) -> pd.DataFrame:
    return _jackknife(context, None, None, lambda means, seeds: (
        _mean_over_pairs(means, "backprop", seeds) - _mean_over_pairs(means, "backprop", seeds, "null")))


# -- judging -------------------------------------------------------------------------

def _natural(text: str) -> tuple:
    """Sort key that puts "depth 5" before "depth 10"."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _claim_text(part: Part) -> str:
    sign = ">" if part.direction > 0 else "<"
    return f"effect {sign} {part.threshold:g}"


def judge(key: str, spec: ClaimSpec, context: Context) -> ClaimResult:
    """Every part of ``spec`` per compared rule and scope, and pooled where its values name a pool; the
    verdicts of all of them made together (one family, ``stats.verdicts``)."""
    results, tests = [], []  # tests: (part, its result, which list, index)
    split = regions(context) if any(part.region for part in spec.parts) else {}
    for part in spec.parts:
        for rule in (spec.judges(context.compared()) if part.per_rule else [None]):
            if part.region and not any(r == rule and part.region in layers.values()
                                       for (_, r), layers in split.items()):
                continue  # e.g. above the module of a rule with a module after every layer
            values = part.values(context, rule)
            values = values.iloc[sorted(range(len(values)), key=lambda k: _natural(str(values["scope"].iloc[k])))]
            result = PartResult(part.label.format(rule=rule), _claim_text(part), digits=part.digits)
            for scope, group in values.groupby("scope", sort=False):
                result.rows.append((str(scope), stats.paired_effect(group["value"], null=part.threshold), ""))
            pooled = values.dropna(subset=["pool"]) if "pool" in values else values.iloc[0:0]
            for pool, group in pooled.groupby("pool", sort=False):
                if group["scope"].nunique() > 1:
                    result.pool_of.update({str(scope): str(pool) for scope in group["scope"].unique()})
                    result.pooled.append((str(pool), stats.paired_effect(group["value"], strata=group["scope"],
                                                                         null=part.threshold), ""))
            tests += [(part, result.rows, i) for i in range(len(result.rows))]
            tests += [(part, result.pooled, i) for i in range(len(result.pooled))]
            results.append(result)
    found = stats.verdicts([where[i][1] for _, where, i in tests], [p.direction for p, _, _ in tests],
                           [p.threshold for p, _, _ in tests])
    for (_, where, i), verdict in zip(tests, found):
        scope, effect, _ = where[i]
        where[i] = (scope, effect, verdict)
    return ClaimResult(key, spec, results)


# -- parts read from other tables ---------------------------------------------------

def _linear_rows(context: Context, value, keep) -> pd.DataFrame:
    """Per (problem, model) and seed of the linear-problem table: ``value(sg row, backprop row)``."""
    table = context.linear
    if table is None or table.empty:
        return _frame([])
    rows = []
    for (dataset, model), group in table.groupby(["dataset", "model"], sort=False):
        if not keep(dataset, model):
            continue
        by_rule = {rule: g.set_index("seed") for rule, g in group.groupby("rule")}
        if "sg" not in by_rule or "backprop" not in by_rule:
            continue
        for seed in by_rule["sg"].index.intersection(by_rule["backprop"].index):
            rows.append((f"{dataset}, {model}", "all problems", int(seed),
                         value(by_rule["sg"].loc[seed], by_rule["backprop"].loc[seed])))
    return _frame(rows)


def _logistic(dataset: str, model: str) -> bool:
    return model == "linear" and "classification" in dataset


LOSS_FLOOR = 0.01


def _gap(sg, bp) -> float:
    return abs(sg["train_loss"] - bp["train_loss"]) / max(abs(bp["train_loss"]), LOSS_FLOOR)


def _signed_gap(sg, bp) -> float:
    return (sg["train_loss"] - bp["train_loss"]) / max(abs(bp["train_loss"]), LOSS_FLOOR)


def _runs_of(context: Context, rule: str) -> list[tuple]:
    return [(planned, path) for planned, path in context.runs.items() if variant(planned.config) == rule]


def _synthetic_corr(context: Context) -> pd.DataFrame:
    rows = _measure(context.analysis, "synthetic_loss_corr")
    return rows[rows["value"].notna()] if not rows.empty else rows


def _closer_is_better(context: Context, rule: str) -> pd.DataFrame:
    corr, out = _synthetic_corr(context), []
    for planned, path in _runs_of(context, rule):
        rows = corr[corr["run_a"] == str(path)]
        rows = rows[rows["step_a"] == rows["step_a"].max()] if not rows.empty else rows
        if len(rows) >= 2:
            out.append((scope_label(planned.cell), pool_label(planned.cell), planned.config.seed,
                        _slope_over_layers(rows)))
    return _frame(out)


def _better_early(context: Context, rule: str) -> pd.DataFrame:
    corr, out = _synthetic_corr(context), []
    for planned, path in _runs_of(context, rule):
        rows = corr[corr["run_a"] == str(path)]
        steps = sorted(rows["step_a"].unique())
        if len(steps) >= 2:
            early, late = (rows[rows["step_a"] == s]["value"].mean() for s in (steps[0], steps[-1]))
            out.append((scope_label(planned.cell), pool_label(planned.cell), planned.config.seed, early - late))
    return _frame(out)


FIXED_FEEDBACK = ("fa", "dfa", "kickback")


def _alignment_growth(context: Context, rule: str) -> pd.DataFrame:
    cos, out = _measure(context.analysis, "grad_cosine"), []
    for planned, path in _runs_of(context, rule):
        rows = cos[cos["run_a"] == str(path)]
        if rows.empty:
            continue
        first, last = rows["step_a"].min(), rows["step_a"].max()
        growth = rows[rows["step_a"] == last]["value"].mean() - rows[rows["step_a"] == first]["value"].mean()
        out.append((scope_label(planned.cell), pool_label(planned.cell), planned.config.seed, growth))
    return _frame(out)


def _asynchrony(rule: str, stages: int = 2) -> tuple[Part, ...]:
    """In-process ``rule`` minus ``rule`` in ``stages`` processes, for each quantity the claim names."""
    staged = f"{rule}, {stages} stages"
    named = (("test accuracy", "test_acc", 4), ("CKA to other-seed backprop", "cka_to_other_backprop", 3),
             ("RSA to the last layer, correlation RDMs", "rsa_to_last_layer_correlation", 3),
             ("RSA to the last layer, Euclidean RDMs", "rsa_to_last_layer_euclidean", 3),
             ("gradient alignment (cosine, second half)", "grad_cosine_late", 3))
    return tuple(Part(f"{rule} {label}: in process − {stages} stages", rule_difference(quantity, rule, staged),
                      1, 0.0, digits) for label, quantity, digits in named)


def _rsa_parts() -> tuple[Part, ...]:
    """Claim 4c per RDM metric, over the layers below the compared rule's module and above it."""
    return tuple(Part(f"RSA to the last layer, {name} RDMs, {REGIONS[region]}: backprop − {{rule}}",
                      rule_difference(f"rsa_to_last_layer_{metric}", region=region), region=region)
                 for metric, name in (("euclidean", "Euclidean"), ("correlation", "correlation"))
                 for region in REGIONS)


_PAIRED = ("backprop and the compared rule's runs of one seed share initial weights and batch order (the modules "
           "aside), so each seed gives one paired difference.")

NOT_BIT_REPRODUCIBLE = (
    "Asynchronous runs are not reproducible bit for bit: which targets a stage has received at each step depends "
    "on the timing of the processes (and so on the machine's load), so rerunning an asynchronous run gives other "
    "numbers, within the spread over seeds; the in-process runs and the lock-step ones (--sync) are reproducible.")

CLAIMS: dict[str, ClaimSpec] = {
    "critical_points": ClaimSpec(
        "1", "Critical points: SG keeps the points of zero loss, even with a linear SG.",
        "Linear and deep linear models on the linear-regression problems (the best fit leaves only the noise, "
        "σ = 0.1): per seed, sg's final training loss on the whole training split over the least-squares "
        "optimum, minus 1. Claimed: below 0.5 (within 1.5× the optimum).",
        "Shows only that the global minimum (the noise floor, not exactly zero loss) stays reachable; it cannot "
        "show which other critical points a linear SG removes or keeps.",
        (Part("sg loss / optimum − 1", lambda c, _: _linear_rows(
            c, lambda sg, bp: sg["train_loss"] / sg["optimum_loss"] - 1,
            lambda d, m: d.startswith("linear-regression")), -1, 0.5),), rules=("sg",)),
    "linear_convergence": ClaimSpec(
        "2", "Convergence on linear problems: backprop and SG reach the same solution, except logistic "
             "regression with a linear SG.",
        f"Every artificial problem, linear and deep linear (10 hidden layers) model, backprop and linear SG: per "
        f"seed the relative gap |L_sg − L_bp| / max(L_bp, {LOSS_FLOOR}) of the final training losses (claimed "
        "below 0.1 for every case but logistic regression), the signed gap for logistic regression with a linear "
        "SG (claimed above 0.1: it struggles), and 1 − cosine of the learned affine maps x ↦ xM + c on the "
        "linear problems (claimed below 0.01).",
        "Finite training with Adam, not the paper's small-step gradient descent. On the separable "
        "linear-classification problems the loss has no minimum (it falls towards 0 as the weights grow), so "
        "there 'same solution' is the same direction of the map at a similar loss.",
        (Part("same loss (all but logistic regression)", lambda c, _: _linear_rows(
            c, _gap, lambda d, m: not _logistic(d, m)), -1, 0.1),
         Part("logistic regression + linear SG struggles", lambda c, _: _linear_rows(c, _signed_gap, _logistic),
              1, 0.1),
         Part("same map (linear problems): 1 − cosine", lambda c, _: _linear_rows(
             c, lambda sg, bp: 1 - sg["map_cosine"], lambda d, m: d.startswith("linear-")), -1, 0.01, 4)),
        rules=("sg",)),
    "synthetic_loss": ClaimSpec(
        "3", "SG approximates the loss: better for layers closer to the output, and at the start of training.",
        "Runs with a module at every layer (dni, cdni): along a straight path from each probe input's activation "
        "to its class mean, the Pearson correlation of the change of the synthetic loss the module implies with "
        "the change of the true loss (`synthetic_loss_corr`). Per seed: the least-squares slope of the last "
        "checkpoint's correlation over layer position scaled to [0, 1] (claimed > 0), and the mean correlation "
        "at the first checkpoint after step 0 minus the last (claimed > 0).",
        "Step 0 is left out (every module starts at zero output, so its synthetic loss is flat and the "
        "correlation undefined); the checkpoint spacing decides what 'early' means.",
        (Part("{rule}: better towards the output (slope)", _closer_is_better),
         Part("{rule}: better at the start (early − late)", _better_early)),
        rules=("dni", "cdni"), needs_backprop=False),
    "trains_well": ClaimSpec(
        "4a", "SG models train well at every depth.",
        "Final test accuracy, backprop minus the compared rule, per seed (paired). Claimed: below 0.01 (within "
        "1 point).",
        "Final accuracy after a fixed schedule, not the best over training; " + _PAIRED,
        (Part("test accuracy: backprop − {rule}", rule_difference("test_acc"), -1, 0.01, 4),), ("test_acc",)),
    "converges_faster": ClaimSpec(
        "4b", "SG models converge faster.",
        "Mean training loss over the run (area under the training-loss curve / steps, `train_loss_area`), "
        "backprop minus the compared rule, per seed. Claimed: > 0 (the rule's curve lies lower). Steps to 95% "
        "test accuracy are shown beside it.",
        "The batch loss is logged before each step's update, on the training batch; a lower area can come from "
        "a faster start or a lower end. " + _PAIRED,
        (Part("training-loss area: backprop − {rule}", rule_difference("train_loss_area")),),
        ("train_loss_area", "steps_to_test_acc_95")),
    "rsa_to_last_layer": ClaimSpec(
        "4c", "Under backprop each layer's similarity structure is already close to the final layer's; under SG "
              "it is more scattered.",
        "Per run, the mean over the layers below the compared rule's module (those trained with its signal), and "
        "separately over the layers above it but the last, of RSA with the last layer (Spearman correlation of "
        "the RDMs' upper triangles, probe set, last checkpoint), with Euclidean RDMs and with 1 − Pearson "
        "correlation RDMs; backprop minus the rule, per seed. Claimed: > 0 for each metric and region.",
        "RSA summarises a region of the stack in one number per run; where the two metrics disagree, the claim "
        "depends on what 'similarity structure' means (distances vs. angles). The layers above the module "
        "receive the true gradient under both rules: an effect there is carried up from below. " + _PAIRED,
        _rsa_parts(), ("rsa_to_last_layer_euclidean", "rsa_to_last_layer_correlation")),
    "layers_differ": ClaimSpec(
        "4d", "SG layers differ from backprop's.",
        "Linear CKA of each layer with the same layer of the backprop runs of the *other* seeds of its cell "
        "(last checkpoint), averaged over the layers below the compared rule's module, and separately above it: "
        "the ceiling (backprop's own pairs of seeds) minus the rule's (its runs against backprop runs of other "
        "seeds). The pairs share runs, so the interval is the jackknife over seeds (leave one seed, with all its "
        f"runs, out). Claimed: > 0. Beside it, the ceiling minus its permutation null (shuffled sample "
        f"correspondence, {NULL_PERMUTATIONS} shuffles, 95th percentile), claimed > 0: without shared structure "
        "above chance the comparison says nothing.",
        "Needs at least 3 seeds for an interval (5 for a verdict). CKA on the probe set is biased upwards when the "
        "probe set is small against the width; the bias hits the rule and the ceiling alike.",
        tuple(Part(f"CKA to other-seed backprop, {REGIONS[region]}: ceiling − {{rule}}", _ceiling_minus_rule(region),
                   region=region) for region in REGIONS)
        + (Part("ceiling above the permutation null (backprop's CKA across seeds − null)", _ceiling_above_null),),
        ("cka_to_other_backprop", "cka_null")),
    "weight_norms": ClaimSpec(
        "4e", "Per-layer weight norms rise slowly with depth under backprop, but start high and fall towards the "
              "output under SG.",
        "Per run, the least-squares slope of ‖W_T‖_F / ‖W_0‖_F (last checkpoint over initial) against layer "
        "position scaled to [0, 1], the input layer h1 left out. Claimed: backprop's slope > 0, the compared "
        "rule's < 0, and their difference > 0.",
        "Relative to the initial norm, so layers of different fan-in compare; Adam's steps do not depend on "
        "the gradient's scale, so norms grow with the number of steps a layer takes in a consistent direction.",
        (Part("backprop's slope", rule_value("weight_norm_slope", "backprop")),
         Part("{rule}'s slope", rule_value("weight_norm_slope"), -1),
         Part("slope: backprop − {rule}", rule_difference("weight_norm_slope"))), ("weight_norm_slope",)),
    "unifying": ClaimSpec(
        "5", "A unifying view: FA, DFA, Kickback and SG each replace δi by an estimate δ̂i; the fixed-feedback "
             "rules learn to align with it.",
        "Every rule's error signal δ̂i is recorded on the probe set beside the true gradient δi: the mean "
        "per-sample cosine (`grad_cosine`) over layers, last checkpoint minus first, per seed and rule. "
        "Claimed: > 0 for each fixed-feedback rule.",
        "The rewriting of each rule as a 'synthetic gradient' is a definition, not an empirical claim; what is "
        "measured is how good each estimate is.",
        (Part("{rule}: alignment growth (cosine, last − first)", _alignment_growth),),
        rules=FIXED_FEEDBACK, needs_backprop=False),
    "asynchrony": ClaimSpec(
        "U", "Update unlocking for real costs DNI: with its stages in separate processes, each training on "
             "whatever targets have arrived (stale by a few steps), DNI and cDNI learn less well, end with "
             "representations further from backprop's and with error signals less aligned with the true "
             "gradient than the same rules simulated in one process (not a claim of the 2017 paper: the "
             "question update unlocking raises).",
        "Per seed, the in-process run minus the run in 2 stage processes (`train --stages 2`, asynchronous; "
        "runs of one seed share initial weights and batch order), and minus the run in 4: final test "
        "accuracy; linear CKA of each layer with the backprop runs of the other seeds, averaged over layers "
        "(`cka_to_other_backprop`); "
        "RSA of each layer with the last (correlation and Euclidean RDMs); the mean per-sample cosine of each "
        "layer's error signal with the true gradient, averaged over the checkpoints of the run's second half "
        "(`grad_cosine_late`; at one checkpoint it moves by about ±0.1 from one to the next). Claimed: "
        "> 0 (asynchrony costs). An interval across 0 says the two cannot be told apart with these seeds.",
        "Two stages give one stale boundary (the top module of the lower stage; every other module trains on "
        "targets from its own pass), so the effect of asynchrony is diluted over the layers; four stages on a "
        "4-block net make every module but the top one stale. " + NOT_BIT_REPRODUCIBLE,
        _asynchrony("dni") + _asynchrony("cdni") + _asynchrony("dni", 4) + _asynchrony("cdni", 4),
        ("test_acc", "cka_to_other_backprop", "rsa_to_last_layer_correlation", "grad_cosine_late"),
        rules=("dni", "cdni", "dni, 2 stages", "cdni, 2 stages", "dni, 4 stages", "cdni, 4 stages")),
}

#: Former names of claims, refused in a spec with their new names.
RENAMED = {"rsa_to_last": "rsa_to_last_layer"}

#: Claims that need the cross-seed CKA quantities (slow: a permutation null per layer and pair).
NEEDS_CKA = {"layers_differ", "asynchrony"}
