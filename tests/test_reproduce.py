"""The reproduction end to end (``--quick``, once per module), its reuse of earlier work, and its report."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from repanalysis.analysis import RepanalysisWarning
from repanalysis.errors import UserError
from repanalysis.figures import FROM_RUNS, FROM_TABLES
from repanalysis.report import VERDICTS
from repanalysis.reproduce import plan, reproduce
from repanalysis.runfile import RunFile

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
    rows = re.findall(r"^\| (main|regression) \| (\w+) \| (\d+) \| \d+ \| ([\d.]+|n/a) \|", report, re.M)
    return {(e, rule, int(seed)): acc for e, rule, seed, acc in rows}


def test_plan_covers_every_rule_with_shared_settings():
    runs = plan(quick=True, seeds=2)
    assert len({r.name for r in runs}) == len(runs)
    rules = {e: {r.config.rule for r in runs if r.experiment == e} for e in ("main", "regression", "linear")}
    assert rules == {"main": {"backprop", "sg", "dni", "cdni", "fa", "dfa"},
                     "regression": {"backprop", "fa", "dfa", "kickback"}, "linear": {"backprop", "sg"}}
    main = [r.config for r in runs if r.experiment == "main"]
    assert len({(c.probe_size, c.steps, c.depth, c.width, c.dataset) for c in main}) == 1
    assert all(r.config.dataset.endswith("-2d") for r in runs if r.experiment == "linear")
    assert len(plan(quick=False, seeds=1)) > len(plan(quick=True, seeds=1))


def test_report_and_every_figure_exist(done):
    out, report, _ = done
    assert report == out / "report.md"
    text = report.read_text()
    stems = [s for figures in FROM_TABLES.values() for s in figures] + list(FROM_RUNS)
    stems += [f"{s}_regression" for s in list(FROM_TABLES["analysis"]) + list(FROM_RUNS)
              if s not in ("synthetic_loss",)]
    for stem in stems:
        for fmt in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{fmt}").is_file(), f"{stem}.{fmt}"
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (out / link).is_file(), link
    assert "figures/learning_curves.png" in text
    for name in ("analysis.csv", "probes.csv", "regression_analysis.csv", "linear.csv"):
        assert (out / "tables" / name).is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_claims_table_has_one_row_per_claim_with_a_verdict(done):
    text = done[1].read_text()
    rows = re.findall(r"^\| ([1-5]) \| .* \| \*\*(.+?)\*\* \|$", text, re.M)
    assert [n for n, _ in rows] == ["1", "2", "3", "4", "5"]
    assert all(verdict in VERDICTS for _, verdict in rows)
    assert "± " in text and "seeds 0, 1" in text


def test_report_numbers_come_from_the_run_files(done):
    out, report, _ = done
    results = _results(report.read_text())
    assert ("main", "backprop", 0) in results and ("regression", "kickback", 1) in results
    for r in plan(quick=True):
        if r.experiment == "main":
            with RunFile(out / "runs" / r.name) as run:
                assert run.status == "complete"
                assert results[("main", r.config.rule, r.config.seed)] == f"{run.evals['test_acc'][-1]:.4f}"
    finals = []
    for seed in (0, 1):
        with RunFile(out / "runs" / f"main_digits_mlp_backprop_s{seed}.h5") as run:
            finals.append(run.evals["test_acc"][-1])
    claim4 = re.search(r"^\| 4 \|.*$", report.read_text(), re.M).group(0)
    assert f"test accuracy backprop {np.mean(finals):.4f} ± {np.std(finals, ddof=1):.4f}" in claim4


def test_rerun_reuses_everything_and_is_much_faster(done):
    out, _, first = done
    before = _mtimes(out)
    start = time.monotonic()
    reproduce(out, quick=True, quiet=True)
    again = time.monotonic() - start
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "report.md"} == {k: v for k, v in before.items() if k != "report.md"}
    assert again < first / 2


def test_a_foreign_or_incomplete_run_is_redone_and_only_what_depends_on_it(done):
    out, _, _ = done
    foreign = out / "runs" / "linear_linear-regression-2d_linear_sg_s0.h5"
    foreign.write_bytes(b"not a run file")
    before = _mtimes(out)
    reproduce(out, quick=True, quiet=True)
    after = _mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert f"runs/{foreign.name}" in changed and "tables/linear.csv" in changed
    assert not {k for k in changed if k.startswith("runs/")} - {f"runs/{foreign.name}"}
    assert "tables/analysis.csv" not in changed and "figures/rdms_regression.png" not in changed
    with RunFile(foreign) as run:
        assert run.status == "complete"


def test_bad_output_folder_and_options_are_user_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        reproduce(afile, quick=True, quiet=True)
    with pytest.raises(UserError, match="classification data set"):
        reproduce(tmp_path / "a", dataset="linear-regression-2d", quick=True, quiet=True)
    with pytest.raises(UserError, match="at least 1"):
        reproduce(tmp_path / "b", seeds=0, quick=True, quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
