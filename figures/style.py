"""One look for every figure: a fixed colour, marker and line style per rule, and saving.

Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal
Design"), chosen to stay distinguishable under the common colour-vision
deficiencies; yellow is left out (too faint on white), and dfa takes Tol's
olive instead of Okabe–Ito's sky blue, which was too close to fa's blue. Every
rule also has its own marker and line style, so no figure relies on colour
alone. A rule keeps its colour in every figure; unknown rules are grey.

Figures are bare ``matplotlib.figure.Figure`` objects, not pyplot ones: they
render with the Agg canvas whatever backend the caller has chosen, change no
global state, and are freed with their last reference. Each is saved as PNG
(``DPI`` dots per inch, a 256-colour palette) and SVG (no timestamp) under the
same stem.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from PIL import Image  # Pillow: a dependency of matplotlib

from repanalysis.outputs import write_atomically

DPI = 100
FORMATS = ("png", "svg")
RULE_ORDER = ("backprop", "sg", "dni", "cdni", "fa", "dfa", "kickback")


@dataclass(frozen=True)
class RuleStyle:
    color: str
    marker: str
    linestyle: str | tuple


RULE_STYLES = {
    "backprop": RuleStyle("#000000", "o", "-"),
    "sg": RuleStyle("#D55E00", "s", "--"),
    "dni": RuleStyle("#E69F00", "^", "-."),
    "cdni": RuleStyle("#CC79A7", "v", ":"),
    "fa": RuleStyle("#0072B2", "D", (0, (5, 1))),
    "dfa": RuleStyle("#999933", "h", (0, (3, 1, 1, 1, 1, 1))),
    "kickback": RuleStyle("#009E73", "X", (0, (1, 1))),
}
UNKNOWN = RuleStyle("#999999", "*", "-")
LAYER_CMAP = "viridis"  # sequential, perceptually uniform, CVD-safe (heatmaps, RDMs)


def rule_style(rule: str) -> RuleStyle:
    """The fixed style of ``rule`` (grey with a star for a rule not in ``RULE_ORDER``)."""
    return RULE_STYLES.get(rule, UNKNOWN)


def line_kwargs(rule: str) -> dict:
    """Matplotlib keyword arguments that draw one rule's line."""
    s = rule_style(rule)
    return {"color": s.color, "marker": s.marker, "linestyle": s.linestyle, "label": rule, "markersize": 5}


def ordered_rules(rules) -> list[str]:
    """Rules in ``RULE_ORDER``, unknown ones after them in name order."""
    rules = set(rules)
    return [r for r in RULE_ORDER if r in rules] + sorted(rules - set(RULE_ORDER))


def layer_key(name: str) -> tuple:
    """Natural sort key: ``h2`` before ``h10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name)))


def ordered_layers(layers) -> list[str]:
    return sorted(set(layers), key=layer_key)


def subplots(n: int, *, ncols: int | None = None, size=(3.2, 2.6), **kwargs):
    """A figure with ``n`` panels in a grid (``ncols`` wide; default one row up to 5, else 4); unused panels hidden."""
    ncols = ncols or (n if n <= 5 else 4)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    flat = fig.subplots(nrows, ncols, squeeze=False, **kwargs).ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def log_y(ax) -> None:
    """A log y axis with a few labels: powers of ten, and 2 and 5 between them when the data
    (plotted before the call) span less than about a decade and a half."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
    if high / low < 30:
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def seeds_note(n_seeds) -> str:
    """``mean ± std over 3 seeds``; ``one seed, no spread`` (nothing to average); a range when rules differ."""
    n = sorted(set(int(k) for k in n_seeds))
    if n == [1]:
        return "one seed, no spread"
    if len(n) == 1:
        return f"mean ± std over {n[0]} seeds"
    return f"mean ± std over {n[0]}–{n[-1]} seeds"


def legend(fig, axes) -> None:
    """One legend below the panels with every labelled artist of any panel (first of each label)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        fig.tight_layout()
        return
    rows = -(-len(entries) // 7)
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=min(len(entries), 7),
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, min(0.3, 0.35 * rows / fig.get_figheight()), 1, 1))


def _write(fig, file, fmt: str) -> None:
    """One format of ``fig`` to the open ``file``; PNGs are reduced to a 256-colour palette (a third of the size)."""
    if fmt != "png":
        fig.savefig(file, dpi=DPI, format=fmt, metadata={"Date": None})
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    image = Image.open(buffer).convert("RGB")
    image = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    image.save(file, format="png", optimize=True)


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir``, each through a temporary file
    (``outputs.write_atomically``: a full disk is a ``UserError``, and leaves no file behind)."""
    return [write_atomically(Path(out_dir) / f"{stem}.{fmt}", lambda f, fmt=fmt: _write(fig, f, fmt), text=False)
            for fmt in FORMATS]
