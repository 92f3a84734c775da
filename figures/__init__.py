"""Figures from tidy tables and run files (seaborn/matplotlib, Agg backend); see ``draw``."""

from .draw import FROM_RUNS, FROM_TABLES, draw_figures
from .style import RULE_ORDER, RULE_STYLES, rule_style

__all__ = ["FROM_RUNS", "FROM_TABLES", "RULE_ORDER", "RULE_STYLES", "draw_figures", "rule_style"]
