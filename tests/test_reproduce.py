"""The reproduction end to end (``--quick``, once per module), its reuse of earlier work, and its report."""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from repanalysis.errors import UserError
from repanalysis.experiments import Overrides, preset
from repanalysis.experiments.reproduce import reproduce
from repanalysis.figures import FROM_RUNS, FROM_TABLES
from repanalysis.measures import RepanalysisWarning
from repanalysis.runfile.hdf5 import RunFile

pytestmark = pytest.mark.filterwarnings(f"ignore::{RepanalysisWarning.__module__}.{RepanalysisWarning.__name__}")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """``(output folder, report path, seconds taken)`` of one quick reproduction."""
    out = tmp_path_factory.mktemp("repro") / "out"
    start = time.monotonic()
    report = reproduce(out, quick=True, quiet=True)
    return out, report, time.monotonic() - start


def _mtimes(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _results(report: str) -> dict[tuple[str, str, int], str]:
    """``(experiment, rule, seed) -> test accuracy`` as written in the report's per-run table."""
    rows = re.findall(r"^\| (main|regression) \| [^|]+ \| (\w+) \| (\d+) \| \d+ \| ([\d.]+|n/a) \|", report, re.M)
    return {(e, rule, int(seed)): acc for e, rule, seed, acc in rows}


def test_quick_plan_covers_every_rule_with_shared_settings():
    runs = preset("digits").runs(quick=True)
    assert len({r.name for r in runs}) == len(runs) and {r.config.seed for r in runs} == {0, 1}
    main = [r.config for r in runs if r.experiment == "main"]
    assert len({(c.probe_size, c.steps, c.depth, c.width, c.dataset) for c in main}) == 1
    assert all(r.config.dataset.endswith("-2d") for r in runs if r.experiment == "linear")
    assert len(preset("digits").runs(overrides=Overrides(seed_count=1))) > len(
        preset("digits").runs(quick=True, overrides=Overrides(seed_count=1)))


def test_report_and_every_figure_exist(done):
    out, report, _ = done
    assert report == out / "report.md"
    text = report.read_text()
    stems = [s for kind in ("analysis", "probes", "linear") for s in FROM_TABLES[kind]] + list(FROM_RUNS)
    stems += [f"{s}_regression" for s in list(FROM_TABLES["analysis"]) + list(FROM_RUNS)
              if s not in ("synthetic_loss",)]
    for stem in stems:
        for fmt in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{fmt}").is_file(), f"{stem}.{fmt}"
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (out / link).is_file(), link
    assert "figures/learning_curves.png" in text
    for name in ("main_analysis.csv", "main_probes.csv", "regression_analysis.csv", "linear_linear.csv",
                 "main_quantities.csv"):
        assert (out / "tables" / name).is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_claims_table_has_every_claim_with_a_verdict_and_an_interval(done):
    text = done[1].read_text()
    rows = re.findall(r"^\| ([1-5][a-e]?) \| \w+ \| .* \| ([+-][\d.]+ (?:\[[^]]+\]|\(range [^)]+\))|n/a) \| "
                      r"(?:[\d.]+|n/a) \| \*\*(.+?)\*\* \|.*$", text, re.M)
    assert {n for n, _, _ in rows} == {"1", "2", "3", "4a", "4b", "4c", "4d", "4e", "5"}
    # the quick version has 2 seeds: no verdict, the range of the seeds' values instead; claim 4d's jackknife
    # over seeds needs 3 for any value
    assert {verdict for _, _, verdict in rows} == {"too few seeds"}
    assert all("range" in e for n, e, _ in rows if n != "4d") and {e for n, e, _ in rows if n == "4d"} == {"n/a"}
    assert "± " in text and "seeds 0, 1" in text and "docs/science.md" in text
    assert "sg_at=None" not in text and "sg_at=the middle interface" in text


def test_report_numbers_come_from_the_run_files(done):
    out, report, _ = done
    results = _results(report.read_text())
    assert ("main", "backprop", 0) in results and ("regression", "kickback", 1) in results
    for r in preset("digits").runs(quick=True):
        if r.experiment == "main":
            with RunFile(out / "runs" / r.name) as run:
                assert run.status == "complete"
                assert results[("main", r.config.rule, r.config.seed)] == f"{run.evals['test_acc'][-1]:.4f}"
    finals = []
    for seed in (0, 1):
        with RunFile(out / "runs" / f"main_digits_mlp_d5_w32_relu_backprop_s{seed}.h5") as run:
            finals.append(run.evals["test_acc"][-1])
    assert (f"| depth 5, width 32, relu | backprop | {np.mean(finals):.4f} ± {np.std(finals, ddof=1):.4f} |"
            in report.read_text())


def test_rerun_reuses_everything_and_is_much_faster(done):
    out, _, first = done
    before = _mtimes(out)
    start = time.monotonic()
    reproduce(out, quick=True, quiet=True)
    again = time.monotonic() - start
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "report.md"} == {k: v for k, v in before.items() if k != "report.md"}
    assert again < first / 2


def test_a_moved_folder_keeps_its_tables_and_judges_the_same(done, tmp_path):
    """Tables name runs relative to themselves: a copy elsewhere (sizes and times kept, so every product is
    reused) matches its tables' rows to its own runs, as the claims do by run path."""
    out, report, _ = done
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    before = _mtimes(moved)
    text = reproduce(moved, quick=True, quiet=True).read_text()
    assert {k: v for k, v in _mtimes(moved).items() if k != "report.md"} == {
        k: v for k, v in before.items() if k != "report.md"}

    def claims(report_text: str) -> str:
        return report_text.split("## Claims")[1].split("## Details")[0]

    assert claims(text) == claims(report.read_text()) and "no data" not in claims(text)
    analysis = pd.read_csv(moved / "tables" / "main_analysis.csv")
    assert analysis.run_a.str.startswith("../runs/").all()
    assert (analysis.run_b.dropna().str.startswith("../runs/")).all()


def test_a_foreign_or_incomplete_run_is_redone_and_only_what_depends_on_it(done):
    out, _, _ = done
    foreign = out / "runs" / "linear_linear-regression-2d_linear_sg_s0.h5"
    foreign.write_bytes(b"not a run file")
    before = _mtimes(out)
    reproduce(out, quick=True, quiet=True)
    after = _mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert f"runs/{foreign.name}" in changed and "tables/linear_linear.csv" in changed
    assert not {k for k in changed if k.startswith("runs/")} - {f"runs/{foreign.name}"}
    assert "tables/main_analysis.csv" not in changed and "figures/rdms_regression.png" not in changed
    with RunFile(foreign) as run:
        assert run.status == "complete"


def test_bad_output_folder_and_options_are_user_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        reproduce(afile, quick=True, quiet=True)
    with pytest.raises(UserError, match="classification data set"):
        reproduce(tmp_path / "a", overrides=Overrides(dataset="linear-regression-2d"), quick=True, quiet=True)
    with pytest.raises(UserError, match="at least 1"):
        reproduce(tmp_path / "b", overrides=Overrides(seed_count=0), quick=True, quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def paper_quick(tmp_path_factory):
    """The paper preset's quick version on digits (no MNIST needed): 2 depths x 2 activations x 2 rules x 2 seeds."""
    out = tmp_path_factory.mktemp("paper") / "out"
    report = reproduce(out, spec=preset("paper"), quick=True, overrides=Overrides(dataset="digits"), quiet=True)
    return out, report


def test_paper_preset_judges_every_cell_and_pools_over_depth(paper_quick):
    out, report = paper_quick
    text = report.read_text()
    for number in ("4a", "4b", "4c", "4d", "4e"):
        assert f"### Claim {number} (depth)" in text
    for scope in ("depth 3, relu", "depth 6, tanh"):
        assert f"| {scope} | 2 |" in text  # a row per cell, from 2 seeds
    for scope in ("relu, all depths", "tanh, all depths"):
        assert f"| {scope} | 4 |" in text  # and per pooled scope: 2 seeds at each of 2 depths
    for stem in ("depth_accuracy", "depth_convergence", "depth_rsa_to_last_layer", "depth_cka_to_backprop",
                 "depth_weight_norms", "rdms_d3_relu", "rdms_d6_tanh"):
        assert (out / "figures" / f"{stem}.png").is_file(), stem
    assert "--preset paper --quick --dataset digits" in text


def test_quantities_are_read_from_the_run_files_and_tables(paper_quick):
    from repanalysis.analysis.tables import read_table

    out, _ = paper_quick
    q = read_table(out / "tables" / "depth_quantities.csv")  # runs named relative to the table, read back absolute
    analysis = read_table(out / "tables" / "depth_analysis.csv")
    for run, group in q.groupby("run"):
        values = group.set_index("quantity")["value"]
        with RunFile(run) as r:
            assert values["test_acc"] == pytest.approx(r.evals["test_acc"][-1])
            assert values["train_loss_area"] == pytest.approx(r.metrics["train_loss"].mean())
        rsa = analysis[(analysis.measure == "rsa_to_last_layer_correlation") & (analysis.run_a == run)]
        assert values["rsa_to_last_layer_correlation"] == pytest.approx(rsa.value.mean())
    ceiling = q[(q.quantity == "cka_to_other_backprop")]
    null = q[(q.quantity == "cka_null")]
    assert len(ceiling) == len(null) == len(q.run.unique())  # two seeds: every run has an other-seed backprop
    assert (ceiling.value.to_numpy() > null.value.to_numpy()).all()  # trained layers share far more than chance


def test_a_slice_of_the_async_preset_runs_end_to_end(tmp_path):
    """backprop and cdni, in one process and in 2 stage processes (the preset's 4 stages and dni left out),
    2 seeds, 40 steps on digits: the claim compares the rule in stages with the rule in one process, the
    parts of the 4 stages say they have no runs, and the report says asynchrony is not reproducible bit
    for bit."""
    import pandas as pd

    from repanalysis.experiments import parse
    from repanalysis.experiments.spec import PRESETS

    text = (PRESETS / "async.toml").read_text()
    for whole, part in (('rule = ["backprop", "dni", "cdni"]', 'rule = ["backprop", "cdni"]'),
                        ("stages = [1, 2, 4]", "stages = [1, 2]")):
        assert whole in text
        text = text.replace(whole, part)
    spec = parse(text, "async.toml")
    out = tmp_path / "out"
    report = reproduce(out, spec=spec, quick=True, overrides=Overrides(steps=40), quiet=True).read_text()
    assert {p.name for p in (out / "runs").glob("*.h5")} == {
        f"unlocked_digits_mlp_stages{k}_{rule}_s{seed}.h5"
        for k, rule in ((1, "backprop"), (1, "cdni"), (2, "cdni")) for seed in (0, 1)}
    with RunFile(out / "runs" / "unlocked_digits_mlp_stages2_cdni_s0.h5") as run:
        assert run.status == "complete" and "staleness/h2" in run.metrics
    q = pd.read_csv(out / "tables" / "unlocked_quantities.csv")
    staged = q[q["rule"] == "cdni, 2 stages"].set_index(["seed", "quantity"])["value"]
    for quantity in ("test_acc", "cka_to_other_backprop", "rsa_to_last_layer_correlation", "grad_cosine_late"):
        assert np.isfinite(staged[(0, quantity)]) and np.isfinite(staged[(1, quantity)]), quantity
    for quantity in ("test_acc", "grad_cosine_late"):  # the claim's effect is the paired difference of these
        one = q[(q["rule"] == "cdni") & (q["quantity"] == quantity)].set_index("seed")["value"]
        difference = (one - staged.xs(quantity, level="quantity")).mean()
        assert f"| U | unlocked | cdni {'test accuracy' if quantity == 'test_acc' else 'gradient alignment'}" in report
        assert f"{difference:+.{4 if quantity == 'test_acc' else 3}f} (range " in report  # 2 seeds: no verdict
    after = report.split("**cdni test accuracy: in process − 4 stages**")[1]  # no runs in 4 stages here
    assert after.index("No data to judge this part with") < after.index("**")
    assert "not reproducible bit for bit" in report
    assert "| unlocked | all runs | cdni, 2 stages | 1 |" in report  # the per-run table names the variant


def test_reproduce_exits_non_zero_and_names_each_failed_run(tmp_path, capsys):
    """A run that fails (a learning rate that makes the loss non-finite) is named on stderr and the command
    exits 1 (as ``sweep`` does); the report is still written from the runs that completed."""
    from repanalysis.cli import main

    spec = tmp_path / "failing.toml"
    spec.write_text('name = "failing"\ndescription = "one learning rate fails"\ndataset = "digits"\nseeds = 1\n\n'
                    '[experiments.e]\ndescription = "two learning rates"\ntables = ["analysis"]\n'
                    'settings = { model = "mlp", depth = 2, width = 8, steps = 6, batch_size = 32, optimizer = "sgd", '
                    'record_every = 3, eval_every = 3, probe_size = 30 }\n'
                    'grid = { rule = ["backprop"], lr = [0.01, 1e30] }\n')
    out = tmp_path / "out"
    assert main(["reproduce", "--spec", str(spec), "--workers", "1", "--quiet", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if " failed: " in line]
    assert len(failed) == 1, captured.err
    assert failed[0].startswith("repanalysis: e_digits_mlp_lr1e+30_backprop_s0.h5 failed: ") and "non-finite" in failed[0]
    assert (out / "report.md").is_file() and "1 run(s) failed" in captured.out
