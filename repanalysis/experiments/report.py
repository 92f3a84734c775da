"""The reproduction's report: each experiment's claims (``claims.CLAIMS``) with their statistics.

Every number comes from a run file or from a table the reproduction wrote
(``tables/*.csv``). Spread is ``mean ± std`` over seeds (std with ddof 1;
"n/a" with one seed); effects are paired differences with 95% t-intervals,
t-test and sign-flip p-values, and verdicts "held", "not held",
"inconclusive" or "too few seeds", adjusted over each claim's tests
(``stats``).
The report cites ``docs/science.md`` (the paper's claims and how each is
measured) for the reasoning behind each measurement.

``linear_table`` builds the linear-problem table (claims 1 and 2): per run of
a linear or deep linear model, the training loss of its final parameters on
the whole training split, the least-squares optimum of that loss (regression
problems), and its learned affine map ``x -> xM + c`` (read off the network
as ``c = f(0)``, ``M = f(I) - f(0)``) against the backprop run of the same
problem, model and seed: cosine and relative distance ``‖θ - θ_bp‖ / ‖θ_bp‖``
of ``θ = [M; c]``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from repanalysis.analysis.markdown import md_table, mean_std
from repanalysis.datasets import load
from repanalysis.experiments.claims import ClaimResult, scope_label, variant
from repanalysis.measures import stats
from repanalysis.nn import losses
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime.outputs import write_atomically

SCIENCE = "docs/science.md"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (``outputs.write_atomically``)."""
    write_atomically(path, lambda f: f.write(text))


# -- the linear-problem table --------------------------------------------------------

def _affine_map(net, n_features: int) -> np.ndarray:
    """``[d + 1, k]``: the rows of ``M`` then ``c`` of a linear network ``f(x) = xM + c``."""
    with torch.no_grad():
        c = net(torch.zeros(1, n_features))
        m = net(torch.eye(n_features)) - c
    return torch.cat([m, c]).double().numpy()


def _least_squares_loss(x: torch.Tensor, y: torch.Tensor) -> float:
    """The smallest mean ``½‖xM + c - y‖²`` over affine maps, on these samples."""
    a = np.hstack([x.double().numpy(), np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(a, y.double().numpy(), rcond=None)
    return float(0.5 * ((a @ coef - y.double().numpy()) ** 2).sum(1).mean())


def linear_table(paths, data_dir=None) -> pd.DataFrame:
    """One row per run: ``dataset, model, rule, seed, run, train_loss, test_loss, test_acc,
    optimum_loss, map_cosine, map_distance`` (see the module docstring)."""
    from repanalysis.training.parts import rebuild

    rows, maps, data = [], {}, {}
    for path in paths:
        with RunFile(path) as run:
            config, evals = run.config, run.evals
            rule = rebuild(run)
            key = (run.dataset, config["data_seed"])
            if key not in data:
                data[key] = load(run.dataset, data_dir=data_dir, seed=config["data_seed"])
            d = data[key]
            net = rule.network.eval()
            with torch.no_grad():
                train_loss = losses.loss(d.task, net(d.x_train), d.y_train).item()
            maps[str(path)] = _affine_map(net, d.n_features)
            rows.append({
                "dataset": run.dataset, "model": run.model, "rule": run.rule, "seed": run.seed, "run": str(path),
                "train_loss": train_loss, "test_loss": float(evals["test_loss"][-1]),
                "test_acc": float(evals["test_acc"][-1]),
                "optimum_loss": _least_squares_loss(d.x_train, d.y_train) if d.task == "regression" else math.nan,
            })
    table = pd.DataFrame(rows)
    twins = {(r["dataset"], r["model"], r["seed"]): r["run"] for r in rows if r["rule"] == "backprop"}
    cosines, distances = [], []
    for r in rows:
        twin = twins.get((r["dataset"], r["model"], r["seed"]))
        if twin is None:
            cosines.append(math.nan)
            distances.append(math.nan)
            continue
        a, b = maps[r["run"]].ravel(), maps[twin].ravel()
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        distances.append(float(np.linalg.norm(a - b) / np.linalg.norm(b)))
    table["map_cosine"], table["map_distance"] = cosines, distances
    return table


# -- the report ---------------------------------------------------------------------

def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.3f}"


def _summary_rows(results: dict[str, list[ClaimResult]]) -> list[list]:
    """Per claim part: its pooled scopes where there are any, else every scope."""
    rows = []
    for experiment, claims in results.items():
        for claim in claims:
            for part in claim.parts:
                if not part.rows:
                    rows.append([claim.spec.number, experiment, part.label, part.claim, "—", "n/a", "n/a",
                                 "**no data**", ""])
                for scope, effect, verdict in part.pooled or part.rows:
                    cells = [(c, v) for c, _, v in part.rows if part.pool_of.get(c) == scope]
                    shared = set(scope.split(", "))
                    per_cell = "; ".join(f"{', '.join(w for w in c.split(', ') if w not in shared)}: {v}"
                                         for c, v in cells)
                    rows.append([claim.spec.number, experiment, part.label, f"{part.claim}", scope,
                                 effect.text(part.digits), _p(effect.p), f"**{verdict}**", per_cell])
    return rows


def _shown(claim: ClaimResult, quantities: pd.DataFrame) -> list[str]:
    """Mean ± std over seeds of the quantities the claim shows, per scope and rule."""
    if not claim.spec.shows or quantities is None or quantities.empty:
        return []
    q = quantities[quantities["quantity"].isin(claim.spec.shows)]
    rows = []
    for (scope, rule), group in q.groupby(["scope", "rule"], sort=False):
        rows.append([scope, rule] + [mean_std(group[group["quantity"] == name]["value"], 4)
                                     for name in claim.spec.shows])
    return md_table(["scope", "rule"] + [f"`{name}` (mean ± std)" for name in claim.spec.shows], rows) + [""]


def _claim_lines(experiment: str, claim: ClaimResult, quantities: pd.DataFrame) -> list[str]:
    spec = claim.spec
    lines = [f"### Claim {spec.number} ({experiment}): {spec.statement}", "",
             f"Measurement: {spec.measurement}", "",
             f"Verdicts: {stats.CORRECTION} over the {claim.family} tests of this claim below (its parts and "
             f"scopes with at least {stats.MIN_SEEDS} seeds), at a false-discovery rate of {stats.ALPHA:g}.", ""]
    for part in claim.parts:
        lines += [f"**{part.label}** (claimed: {part.claim})", ""]
        lines += md_table(["scope", "seeds", "effect [95% CI]", "p (t)", "p (sign flip)", "verdict"],
                           [[scope, effect.n, effect.text(part.digits), _p(effect.p), _p(effect.p_perm), verdict]
                            for scope, effect, verdict in part.rows + part.pooled]) + [""]
        if not part.rows:
            lines += ["No data to judge this part with: no runs of the rules it compares, or too few seeds for "
                      "its values (claim 4d's jackknife needs 3).", ""]
    if not claim.parts:
        lines += ["No rule of this experiment is one this claim judges.", ""]
    lines += _shown(claim, quantities)
    return lines + [f"What this can and cannot show: {spec.caveat}", ""]


def _results_lines(paths: dict[str, dict]) -> list[str]:
    rows = []
    for experiment, runs in paths.items():
        if experiment == "linear":
            continue
        for planned, path in runs.items():
            with RunFile(path) as run:
                e = run.evals
                acc, loss, step = float(e["test_acc"][-1]), float(e["test_loss"][-1]), int(e["step"][-1])
            rows.append([experiment, scope_label(planned.cell), variant(planned.config), planned.config.seed, step,
                         "n/a" if math.isnan(acc) else f"{acc:.4f}", f"{loss:.4f}", f"`runs/{Path(path).name}`"])
    return md_table(["experiment", "cell", "rule", "seed", "step", "test accuracy", "test loss", "run file"], rows)


def _setting_text(key: str, value, configs) -> str:
    """A shared setting as the report shows it (the SG module's place named, not ``None``)."""
    if key == "sg_at" and value is None:
        depths = sorted({c["depth"] for c in configs})
        return "sg_at=the middle interface, h⌈N/2⌉ (" + ", ".join(f"h{(d + 1) // 2} at depth {d}" for d in depths) + ")"
    return f"{key}={value}"


def _settings_lines(spec, runs, failed: dict[str, str]) -> list[str]:
    """Per experiment: what it is for, the settings that vary between its runs, then those all share."""
    lines = []
    for name, experiment in spec.experiments.items():
        configs = [dataclasses.asdict(r.config) for r in runs if r.experiment == name]
        if not configs:
            continue
        shared = {k: v for k, v in configs[0].items() if all(c[k] == v for c in configs)}
        varying = {k: list(dict.fromkeys(str(c[k]) for c in configs)) for k in configs[0] if k not in shared}
        lines += [f"**{name}** ({len(configs)} runs): {experiment.description}", "",
                  "varying: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in varying.items()), "",
                  "shared: " + ", ".join(f"`{_setting_text(k, v, configs)}`" for k, v in shared.items()), ""]
    if failed:
        lines += ["**Failed runs** (left out of every table):", ""]
        lines += [f"- `{name}`: {message}" for name, message in failed.items()] + [""]
    return lines


CAPTIONS = {
    "learning_curves": "Training loss (batch loss, smoothed), test loss and, for classification, test accuracy "
                       "against step.",
    "similarity_to_backprop": "Linear CKA and SVCCA of each layer with the same layer of the backprop run of the "
                              "same seed, last checkpoint; the backprop line is backprop against other seeds (the "
                              "ceiling). Same-seed runs share their initial weights, which lifts every other line "
                              "(claim 4d uses other-seed pairs).",
    "layer_cka": "Linear CKA between the layers of one network at the last checkpoint.",
    "effective_rank": "Effective rank of each layer's centred activations on the probe set.",
    "weight_norm": "Frobenius norm of the weight matrix feeding each layer (claim 4e).",
    "gradient_alignment": "Cosine between each rule's error signal and the true gradient, per layer, over training "
                          "(claim 5).",
    "synthetic_loss": "The analysis table's `synthetic_loss_corr` and `synthetic_loss_gap` per layer over training "
                      "(claim 3; see the caveat there).",
    "probe_accuracy": "Linear (logistic regression) and k-NN probe accuracy per layer at the last checkpoint.",
    "rdms": "RDMs (Euclidean) of each layer (rows) under each rule (columns), probe inputs sorted by class (claim 4c).",
    "spectra": "Singular-value spectra of each layer's activations at the last checkpoint.",
    "linear_problems": "Final training loss and agreement of the learned maps, backprop against a linear SG "
                       "(claims 1 and 2).",
    "depth_accuracy": "Final test accuracy against depth, per activation and rule: mean over seeds, with its 95% "
                      "t-interval from 5 seeds on, else the range of the seeds' values (claim 4a).",
    "depth_convergence": "Training-loss area and steps to 95% test accuracy against depth (claim 4b).",
    "depth_rsa_to_last_layer": "Mean RSA of each layer with the last layer against depth, Euclidean and "
                               "correlation RDMs (claim 4c).",
    "depth_cka_to_backprop": "Mean linear CKA with other-seed backprop runs against depth: the compared rules, "
                             "the backprop ceiling and the permutation null (claim 4d).",
    "depth_weight_norms": "Relative weight norm ‖W_T‖/‖W_0‖ against relative layer position for every depth; "
                          "the input layer h1 is marked with an open symbol (claim 4e).",
    "recurrent": "Recurrent tasks: the longest length solved (Copy, Repeat Copy) and held-out bits per character "
                 "(language model) against the truncation window T, per rule; small points are seeds.",
    "recurrent_positions": "Recurrent runs over positions in the window (probe sequences, last checkpoint): the "
                           "cosine of the rule's gradient at the state with the true one against the steps to the "
                           "window's end, the debiased linear CKA of h with the BPTT run's against the step's place "
                           "in its window, the DNI module's cosine with the true boundary gradient over training, "
                           "and the accuracy of reading the first input symbol off h at each probe step (Copy, "
                           "Repeat Copy); means over seeds, one line per rule and T.",
}


REGION_WORDS = {"below": "below the module", "above": "above it"}


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "n/a"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:+.{digits}f}"
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _fit_text(row) -> list[str]:
    r2 = "n/a" if not np.isfinite(row["r2"]) else f"{row['r2']:.2f} [{row['r2_low']:.2f}, {row['r2_high']:.2f}]"
    return [_interval(row["slope"], row["low"], row["high"]), _p(row["p"]), r2, int(row["seeds"]),
            int(row["points"])]


def _explain_lines(experiment: str, frame: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    """The explanation (``analysis.explain``): E and D per arm and region, and the fits of D on E."""
    lines = [f"## Explanation ({experiment}): error signal against drift from the backprop twin", "",
             "Every arm trains the network from its seed's start on its seed's batches, as its backprop *twin* "
             "does; only the error signal differs. E: 1 − cosine of the block's parameter gradient under the rule "
             "with the true one (the *update* error, the error that reaches the weights; a zero update counts as "
             "1), and of the signal at the layer with the true gradient (the *signal* error); 0 above the module, "
             "where every arm learns from the true gradient. Exposure: E averaged over training up to a "
             "checkpoint. D: 1 − linear CKA of the layer with the twin's at the same step. Fits: least squares, "
             "95% jackknife t-intervals over seeds (each seed, with all its runs, left out in turn), "
             "`stats.cluster_fit`; R² of the model.", ""]
    if frame.empty:
        return lines + ["No arm had a backprop twin to compare with.", ""]
    last = frame[frame["step"] == frame.groupby("run")["step"].transform("max")]
    for scope, cell in last.groupby("scope", sort=False):
        lines += [f"### {scope}", ""]
        per_run = cell.groupby(["region", "arm", "seed"], sort=False)[["exposure_update", "exposure_signal",
                                                                        "d_cka", "d_rsa"]].mean()
        ceiling = cell.groupby("region")["ceiling_cka"].mean()
        rows = []
        for (region, arm), group in per_run.groupby(level=[0, 1], sort=False):
            rows.append([region, arm, len(group), mean_std(group["exposure_update"]),
                         mean_std(group["exposure_signal"]), mean_std(group["d_cka"]), mean_std(group["d_rsa"])])
        lines += ["Per region and arm, at the last checkpoint (mean over the region's layers; mean ± std over "
                  "seeds): the run-average update and signal error, and D (1 − CKA and 1 − RSA with the twin). "
                  "For scale, 1 − CKA between backprop runs of different seeds (another start and other batches "
                  "alone): " + ", ".join(f"{ceiling[r]:.3f} {REGION_WORDS[r]}" for r in ceiling.index) + ".", "",
                  *md_table(["region", "arm", "seeds", "update error", "signal error", "1 − CKA", "1 − RSA"], rows),
                  ""]
        own = fits[(fits["scope"] == scope) & (fits["points"] > 0)]
        dose = own[own["model"].isin(["dose-response", "carried up"]) & own["layer"].isin(["below", "above"])]
        lines += ["Across arms: D at the last checkpoint against the run-average error of the layers below the "
                  "module (below: each layer's own; above: the mean of the layers below it, since its own is 0); "
                  "a region's points are its layers of every arm's runs:", "",
                  *md_table(["region", "error", "covariate", "slope [95% CI]", "p", "R² [95% CI]", "seeds",
                              "points"],
                             [[r.layer, r.error, r.covariate, *_fit_text(r)] for _, r in dose.iterrows()]), ""]
        lagged = own[own["model"] == "lagged"]
        lines += ["Lagged, below the module (D's change to the next checkpoint against the update error at the "
                  "checkpoint), across arms and per arm:", "",
                  *md_table(["arms", "slope [95% CI]", "p", "R² [95% CI]", "seeds", "points"],
                             [[r.arm, *_fit_text(r)] for _, r in lagged.iterrows()]), ""]
        lines += _explain_summary(cell, dose)
    lines += [f"Per-layer fits (and per arm over training): `tables/{experiment}_explain.csv`; every point: "
              f"`tables/{experiment}_explain_frame.csv`.", ""]
    return lines


def _explain_summary(cell: pd.DataFrame, dose: pd.DataFrame) -> list[str]:
    """The cell's explanation in plain words, from its fits and its drift above the module."""
    def fit(region: str, covariate: str):
        row = dose[(dose["layer"] == region) & (dose["error"] == "update") & (dose["covariate"] == covariate)]
        return row.iloc[0] if len(row) and np.isfinite(row["slope"].iloc[0]) else None

    below, with_gap, above = fit("below", "none"), fit("below", "loss gap"), fit("above", "none")
    if below is None:
        return ["Too few seeds or arms for a fit here.", ""]
    drift = {region: cell[cell["region"] == region].groupby("run")["d_cka"].mean().mean() for region in REGION_WORDS}
    words = [f"In words: below the module, the run-average update error accounts for R² = {below.r2:.2f} "
             f"[{below.r2_low:.2f}, {below.r2_high:.2f}] of the variation of the final drift across arms, seeds "
             f"and layers (slope {_interval(below.slope, below.low, below.high)})"]
    if with_gap is not None:
        words.append(f"with the training-loss gap to the twin held fixed, the slope is "
                     f"{_interval(with_gap.slope, with_gap.low, with_gap.high)}")
    if np.isfinite(drift["above"]):
        words.append(f"above the module, where every arm learns from the true gradient, the layers drift by "
                     f"{drift['above']:.3f} on average against {drift['below']:.3f} below"
                     + (f", and that drift follows the error below them (R² {above.r2:.2f}): it is carried up, not "
                        f"made where it is" if above is not None else ""))
    return ["; ".join(words) + ". What this cannot show: arms differ in more than their error (a slower module "
            "also changes when the blocks below move), and the fit is across arms, not within one.", ""]


def _selection_lines(spec, choice) -> list[str]:
    """The selections' candidates, their validation metric and the choice, per experiment that selects."""
    if choice is None or choice.table.empty:
        return []
    lines = ["## Selection on the validation split", ""]
    for name, exp in spec.experiments.items():
        rows = choice.table[choice.table["experiment"] == name]
        if exp.select is None or rows.empty:
            continue
        validation = exp.settings.get("validation")
        cells = "; ".join(f"{axis} {', '.join(map(str, values))}" for axis, values in exp.select.cells.items())
        lines += [f"Experiment `{name}`: each rule's settings were chosen among {len(next(iter(exp.select.candidates.values())))} "
                  f"candidates (the same number for every rule) by the mean `{exp.select.metric}` of the last "
                  f"evaluation on {validation} training inputs held out as a validation split, on seed(s) "
                  f"{', '.join(map(str, exp.select.seeds))}" + (f" at {cells}" if cells else "")
                  + "; the runs reported above use other seeds, and the selection never read the test split.", "",
                  *md_table(["rule", "for", "candidate", f"{exp.select.metric} (mean over runs)", "runs", "chosen"],
                             [[r.rule, r.key or "every cell", r.settings, f"{r['mean']:.4f}", r.runs,
                               "**yes**" if r.chosen else ""] for _, r in rows.iterrows()]), ""]
    return lines


def _figure_lines(figures: list[Path]) -> list[str]:
    """A captioned link per PNG, in the order of ``CAPTIONS`` (RDM grids of chosen depths with ``rdms``)."""
    order = list(CAPTIONS)

    def base(figure: Path) -> str:
        return next((name for name in sorted(order, key=len, reverse=True) if figure.stem.startswith(name)),
                    figure.stem)

    def key(figure: Path) -> tuple:
        b = base(figure)
        return figure.stem != b, order.index(b) if b in order else len(order), figure.stem

    lines = []
    for figure in sorted((f for f in figures if f.suffix == ".png"), key=key):
        b = base(figure)
        extra = figure.stem[len(b):].lstrip("_").replace("_", " ")
        caption = CAPTIONS.get(b, "") + (f" ({extra}.)" if extra else "")
        lines += [f"### {figure.stem.replace('_', ' ')}", "", caption.strip(), "",
                  f"![{figure.stem}](figures/{figure.name}) ([SVG](figures/{figure.stem}.svg))", ""]
    return lines


def write_report(out: Path, *, spec, runs, results: dict[str, list[ClaimResult]],
                 quantities: dict[str, pd.DataFrame], paths: dict[str, dict], failed, figures,
                 command: str, quick: bool, choice=None, explained=None, recurrent=None) -> Path:
    """Write ``out/report.md`` atomically; return its path.

    ``spec``: the spec as run (overrides applied); ``runs``: its planned runs;
    ``results``: experiment -> its judged claims; ``quantities``: experiment ->
    its quantity table; ``paths``: experiment -> {planned run: complete run
    file}; ``failed``: file name -> error; ``figures``: the files drawn;
    ``command``: the command line that reproduces this report; ``quick``:
    whether it is the quick version (too short for its verdicts to mean much);
    ``choice``: what the experiments' selections chose (``experiments.selection``), or None;
    ``explained``: experiment -> (its explanation frame, its fits) (``analysis.explain``);
    ``recurrent``: recurrent experiment -> its tables (``recurrent``, ``positions``, ``training``; see
    ``analysis.recurrent`` and ``recurrent.positions``), reported instead of claims.
    """
    from repanalysis import __version__
    from repanalysis.analysis.recurrent import report_lines

    recurrent = recurrent or {}
    seeds = sorted({r.config.seed for r in runs})
    provenance = f"`{command}` (seeds {', '.join(map(str, seeds))}; repanalysis {__version__}, torch {torch.__version__})"
    lines = [f"# Reproduction report: {spec.name}", "", spec.description, ""]
    if recurrent and not results:  # recurrent experiments alone: no claims
        lines += [f"Measured here by {provenance}. Every number is read from the run files in `runs/` or the "
                  "tables in `tables/`.", "",
                  *(["**Quick version**: the runs are far too short for these numbers to mean much; it checks that "
                     "the whole chain works. Run without `--quick` for the measurement.", ""] if quick else [])]
    else:
        lines += [
            f"The spec's claims (those of Czarnecki et al. 2017, and any the spec adds) against numbers "
            f"measured here, by {provenance}. What each "
            f"claim means and how it is measured is written up in `{SCIENCE}` of the repanalysis repository. "
            "Effects are paired differences over seeds (runs of one seed share initial weights and batches; claim "
            "4d's are jackknife pseudo-values over seeds, since its pairs of runs share runs), with 95% Student-t "
            "intervals (pooled scopes weigh every depth alike, Welch–Satterthwaite degrees of freedom), two-sided "
            "t-test p-values against the claimed threshold and, beside them, exact sign-flip p-values (which "
            f"cannot go below 1/16 with 5 seeds). Verdicts: the p-values of each claim's parts and scopes are "
            f"adjusted together ({stats.CORRECTION}, false-discovery rate {stats.ALPHA:g}); a part is **held** "
            "when its adjusted p is below that and the effect lies on the claimed side, **not held** when it lies "
            f"on the other side, **inconclusive** otherwise; with fewer than {stats.MIN_SEEDS} seeds there is no "
            "verdict (**too few seeds**) and no interval, only the range of the seeds' values. Spread: mean ± std "
            "over seeds (ddof 1). Every number is read from the run files in `runs/` or the tables in `tables/`.",
            "",
            *(["**Quick version**: the runs are far too short for these verdicts to mean much; it checks that the "
               "whole chain works. Run without `--quick` for the reproduction.", ""] if quick else []),
            "## Claims", "",
            *md_table(["#", "experiment", "part", "claimed", "scope", "effect [95% CI]", "p", "verdict",
                        "per cell"], _summary_rows(results)),
            "", "## Details", "",
        ]
    for experiment, claims in results.items():
        for claim in claims:
            lines += _claim_lines(experiment, claim, quantities.get(experiment))
    for experiment, tables in recurrent.items():
        lines += report_lines(experiment, **tables)
    for experiment, (frame, fits) in (explained or {}).items():
        lines += _explain_lines(experiment, frame, fits)
    lines += _selection_lines(spec, choice)
    feedforward = {name: runs for name, runs in paths.items() if name not in recurrent}
    if feedforward:
        lines += ["## Final test accuracy and loss per run", "", *_results_lines(feedforward), ""]
    lines += ["## Settings", "", *_settings_lines(spec, runs, failed),
              "Tables: `tables/<experiment>_<kind>.csv` (`analysis`, `probes`, `linear`, `recurrent` (one row per "
              "recurrent run), and `quantities`: the per-run values the claims use).", "",
              "## Figures", "", *_figure_lines(figures)]
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report
