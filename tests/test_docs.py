"""The documentation: the site builds with ``mkdocs build --strict``, every example of its pages runs as written
(but those marked ``<!-- not run: why -->``, which are listed here), and the run-file page is the writer's schema.

Examples are fenced blocks: ``sh`` blocks are command lines (``repanalysis ...`` runs in this process, ``python
FILE`` runs a file), a ``python`` block runs as it is, and a block with ``title="FILE"`` is saved as that file
(for a later ``python FILE`` or ``--spec FILE``). A page's examples run top to bottom in an empty folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from helpers import small_config, train_interrupted
from test_readme import your_own_model

from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.training.train import resume, train

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w+)?(?:\s+title=\"([^\"]+)\")?\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")

#: The only examples not run, by page and first line: each needs what a test cannot have or takes minutes.
EXPECTED_NOT_RUN = {
    ("index.md", "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e . "
                 "&& .venv/bin/repanalysis reproduce --out repro"),
    ("guide/reproductions.md", "repanalysis reproduce --out repro                                   "
                               "# --preset digits, the main job"),
    ("guide/clusters.md", "repanalysis reproduce --quick --workers 2 --out try        "
                          "# a local Dask cluster of 2 worker processes"),
    ("guide/clusters.md", "# keep it running: the scheduler lives in this process"),
}


@dataclass(frozen=True)
class Block:
    page: Path
    language: str
    title: str | None
    text: str
    not_run: str | None  # why, for a block marked not to be run

    @property
    def name(self) -> str:
        return self.page.relative_to(DOCS).as_posix()

    @property
    def runnable(self) -> bool:
        return self.title is not None or self.language in ("sh", "python")


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order, each with the reason of a ``not run`` marker on the line before."""
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = lines.index("```", i + 1)
            marker = NOT_RUN.match(lines[i - 1]) if i else None
            found.append(Block(page, fence.group(1) or "", fence.group(2), "\n".join(lines[i + 1 : end]) + "\n",
                               marker.group(1) if marker else None))
            i = end
        i += 1
    return found


def run_command(argv: list[str], name: str) -> None:
    if argv[0] == "repanalysis":
        assert main(argv[1:]) == 0, f"{name}: {shlex.join(argv)}"
    elif argv[0] == "python" and len(argv) == 2:
        runpy.run_path(argv[1], run_name="__main__")
    else:
        raise AssertionError(f"{name}: cannot run {shlex.join(argv)} (only repanalysis ... and python FILE)")


def run_block(block: Block) -> None:
    if block.title:
        Path(block.title).write_text(block.text)
    elif block.language == "sh":
        for line in block.text.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                run_command(argv, block.name)
    elif block.language == "python":
        exec(compile(block.text, block.name, "exec"), {"__name__": "__main__"})


#: Pages whose examples another test runs as they stand: the recorder page is the README's "Your own model"
#: (``test_the_guide_runs_the_readme_example`` checks they are the same text; tests/test_readme.py runs it).
RUN_ELSEWHERE = {DOCS / "guide" / "recorder.md"}


def runnable_pages() -> list[Path]:
    return [page for page in PAGES
            if page not in RUN_ELSEWHERE and any(b.runnable and not b.not_run for b in blocks(page))]


# -- the examples ---------------------------------------------------------------------------------------------


def test_every_example_is_of_a_known_kind():
    kinds = {(b.language, b.title is not None) for page in PAGES for b in blocks(page)}
    assert kinds <= {("sh", False), ("python", False), ("python", True), ("toml", False), ("toml", True),
                     ("text", False)}, kinds


def test_only_the_listed_examples_are_not_run():
    marked = {(b.name, b.text.splitlines()[0]) for page in PAGES for b in blocks(page) if b.not_run}
    assert marked == EXPECTED_NOT_RUN


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_the_examples_run_as_written(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in blocks(page):
        if block.runnable and not block.not_run:
            run_block(block)
    capsys.readouterr()


def test_the_guide_runs_the_readme_example():
    """The README's Recorder example and its commands are the guide's (which the test above runs)."""
    code, commands = your_own_model()
    guide = blocks(DOCS / "guide" / "recorder.md")
    assert guide[0].title == "mine.py" and guide[0].text.strip() == code
    assert [shlex.split(line, comments=True) for line in guide[1].text.splitlines()] == [
        ["python", "mine.py"], *commands]


# -- the pages ------------------------------------------------------------------------------------------------


def test_no_page_speaks_of_how_it_was_made():
    for path in [*PAGES, ROOT / "README.md", ROOT / "CHANGELOG.md"]:
        assert not re.search(r"session|PAPER\.md", path.read_text(), re.IGNORECASE), path


def test_the_readme_is_an_introduction():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_code_cites_the_paper_not_a_file_outside_the_repository():
    for folder in ("repanalysis", "datasets", "probes", "figures", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "PAPER.md" not in path.read_text() or path.name == "test_docs.py", path


def test_the_results_page_lists_every_stored_report():
    text = (DOCS / "results" / "index.md").read_text()
    listed = text.split("<!-- results:", 1)[1].split("-->", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    folders = sorted(p.name for p in (DOCS / "results").iterdir() if p.is_dir())
    if folders:
        assert [re.match(r"- \[([^]]+)\]", line).group(1) for line in listed] == folders
    else:
        assert listed == ["*None stored yet.*"]


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers")),
                    reason="mkdocs, mkdocs-material or mkdocstrings[python] is not installed (the docs extra: "
                           "pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr
    measures = (site / "reference" / "measures" / "index.html").read_text()
    assert "doc-function" in measures and "linear_cka" in measures  # the reference rendered from the docstrings
    assert (site / "guide" / "runfile" / "index.html").exists() and (site / "changelog" / "index.html").exists()


# -- the run-file schema against the writer --------------------------------------------------------------------

RUNFILE = DOCS / "guide" / "runfile.md"
#: Names of the page's tables that these runs cannot write, and why.
NOT_WRITTEN = {"staleness/<layer>": "needs --workers (stages in processes)"}


def table(header: str) -> dict[str, str]:
    """The table of the run-file page whose first column is ``header``: backticked name -> second column."""
    lines = RUNFILE.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"| {header} |")))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def pattern(name: str) -> re.Pattern:
    """A name with placeholders as a regex: ``<slot>`` a resume slot, ``<name>`` any name (a metric's may hold a
    ``/``), any other one path segment."""
    forms = {"<slot>": "[01]", "<name>": ".+"}
    return re.compile("".join(forms.get(p, "[^/]+") if p.startswith("<") else re.escape(p)
                              for p in re.split(r"(<[a-z]+>)", name)))


def matching(names, patterns) -> dict[str, str]:
    """Every name -> the pattern it matches with the fewest placeholders (``/resume/<slot>/step`` before
    ``/resume/<slot>/<name>``); there must be one."""
    out = {}
    for name in names:
        hits = sorted((p.count("<"), p) for p in patterns if pattern(p).fullmatch(name))
        assert hits and (len(hits) == 1 or hits[0][0] < hits[1][0]), f"{name}: {hits or 'no row'} of {RUNFILE.name}"
        out[name] = hits[0][1]
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory, digits):
    """Small runs that together write every part of the schema: an sg run with a validation split, some layers
    and int16 arrays, stopped by Ctrl-C (its failed state kept) and resumed; a noisy classification run; an fa
    regression run with SGD and momentum. Returns ``{name: path}``."""
    folder = tmp_path_factory.mktemp("schema")
    paths = {name: folder / f"{name}.h5" for name in ("resumed", "noisy", "regression")}
    with pytest.MonkeyPatch.context() as patch:
        train_interrupted(patch, small_config(rule="sg", record_dtype="int16", record_layers=[2, 3],
                                              validation=200), paths["resumed"], digits, 15)
    paths["failed"] = folder / "failed.h5"
    paths["failed"].write_bytes(paths["resumed"].read_bytes())
    resume(paths["resumed"], data=digits, quiet=True)
    train(small_config(rule="noisy"), paths["noisy"], quiet=True, data=digits)
    regression = small_config(rule="fa", dataset="nonlinear-regression-2d", optimizer="sgd", momentum=0.9, lr=0.01)
    train(regression, paths["regression"], quiet=True, data=load(regression.dataset))
    return paths


def contents(path) -> tuple[dict[str, str], dict[str, set[str]], set[str]]:
    """``({dataset path: dtype}, {layer: its attributes}, root attributes)`` of one run file."""
    datasets, layers = {}, {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: datasets.__setitem__("/" + name, str(o.dtype))
                     if isinstance(o, h5py.Dataset) else None)
        for name, group in f["layers"].items():
            layers[name] = set(group.attrs)
        return datasets, layers, set(f.attrs)


def test_the_run_file_page_names_what_the_writer_writes(written):
    paths, rows = table("path"), {}
    root = set()
    for name, path in written.items():
        datasets, layers, attrs = contents(path)
        assert attrs <= set(table("attribute")), (name, attrs - set(table("attribute")))
        root |= attrs
        assert all(names == set(table("layer attribute")) for names in layers.values()), (name, layers)
        for dataset, row in matching(datasets, paths).items():
            rows.setdefault(row, []).append((name, dataset, datasets[dataset]))
    assert root == set(table("attribute"))  # every attribute the page lists is written by some run
    assert set(rows) == set(paths)  # and every dataset row

    kinds = {"/metrics/": "metric", "/eval/": "evaluation", "/resume/": "state"}
    for prefix, header in kinds.items():
        names = {dataset.split("/", 3 if prefix == "/resume/" else 2)[-1]
                 for found in rows.values() for _, dataset, _ in found if dataset.startswith(prefix)}
        names.discard("step")  # /resume/<slot>/step is a row of the datasets' table
        used = set(matching(names, table(header)).values()) | ({"step"} if prefix != "/resume/" else set())
        assert used | set(NOT_WRITTEN) >= set(table(header)), (header, set(table(header)) - used)

    for row, found in rows.items():  # the stated types, where a float32 run states them
        stated = paths[row].split()[0]
        if row.startswith("/params/") or not re.fullmatch(r"(u?int|float)\d+", stated):
            continue
        for name, dataset, dtype in found:
            if name not in ("resumed", "failed"):  # recorded in int16
                assert dtype == stated, (name, dataset, dtype, stated)
