"""One look for every figure: a fixed colour, marker and line style per rule, and saving.

Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal
Design"), chosen to stay distinguishable under the common colour-vision
deficiencies; yellow is left out (too faint on white), and dfa takes Tol's
olive instead of Okabe–Ito's sky blue, which was too close to fa's blue. Every
rule also has its own marker and line style, so no figure relies on colour
alone. A rule keeps its colour in every figure; unknown rules are grey.

Captions say what is drawn: how many seeds each mean is over; a spread
(± std error bars or band) only over two seeds or more (none for one
seed, and the caption says so); a 95% interval only where the
report gives one (``figures.depth``); a line named in a caption or legend
only where it has data. Titles are wrapped to the figure's width
(``fit_title``), never clipped.

Figures are bare ``matplotlib.figure.Figure`` objects, not pyplot ones: they
render with the Agg canvas whatever backend the caller has chosen, change no
global state, and are freed with their last reference. Each is saved as PNG
(``DPI`` dots per inch, a 256-colour palette) and SVG (no timestamp) under the
same stem.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from PIL import Image  # Pillow: a dependency of matplotlib

from repanalysis.runtime.outputs import write_atomically

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


def ordered_layers(layers, positions: dict | None = None) -> list[str]:
    """``layers`` bottom to top: by their position in the model (``positions``, read off the tables' position
    columns or the run files); layers without one (tables from elsewhere) after them, in natural name order."""
    positions = positions or {}
    return sorted(set(layers), key=lambda name: (positions.get(name, math.inf), layer_key(name)))


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


def count_text(counts, what: str = "seed") -> str:
    """``3 seeds``, ``one seed`` or ``1–3 seeds`` (a range where rules or layers have different numbers)."""
    n = sorted(set(int(k) for k in counts))
    if n == [1]:
        return f"one {what}"
    return f"{n[0]} {what}s" if len(n) == 1 else f"{n[0]}–{n[-1]} {what}s"


def seeds_note(n_seeds) -> str:
    """``mean ± std over 3 seeds``; ``one seed, no spread`` (nothing to average, none drawn); ``mean ± std
    over 1–3 seeds`` where rules differ (a spread only where there are two or more)."""
    n = sorted(set(int(k) for k in n_seeds))
    if n == [1]:
        return "one seed, no spread"
    return f"mean ± std over {count_text(n)}"



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


#: The share of the figure's width a title's line may take.
TITLE_WIDTH = 0.96


def fit_title(fig) -> None:
    """Wrap the figure's title (``suptitle``) so that every line fits ``TITLE_WIDTH`` of the figure's width,
    and make the figure taller by the lines that adds, at the top, the panels keeping their size in inches."""
    title = fig._suptitle
    if title is None or not title.get_text():
        return
    text = title.get_text()
    box = title.get_window_extent()
    if box.width <= TITLE_WIDTH * fig.bbox.width:
        return
    lines = text.split("\n")
    per_char = box.width / max(len(line) for line in lines)
    fits = max(10, int(TITLE_WIDTH * fig.bbox.width / per_char))
    wrapped = [part for line in lines for part in (textwrap.wrap(line, fits) or [""])]
    title.set_text("\n".join(wrapped))
    added = title.get_window_extent().height - box.height
    if added > 0:
        height = fig.bbox.height
        grow = height / (height + added)  # the old height as a share of the new one
        fig.set_figheight((height + added) / fig.dpi)
        for ax in fig.axes:
            x0, y0, w, h = ax.get_position().bounds
            ax.set_position((x0, y0 * grow, w, h * grow))


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir``, each through a temporary file
    (``outputs.write_atomically``: a full disk is a ``UserError``, and leaves no file behind); its title
    wrapped to fit first (``fit_title``)."""
    fit_title(fig)
    return [write_atomically(Path(out_dir) / f"{stem}.{fmt}", lambda f, fmt=fmt: _write(fig, f, fmt), text=False)
            for fmt in FORMATS]
