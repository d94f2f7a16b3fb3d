"""The multiplier library: the `Multiplier` type, built-in families, importers, the user library."""

from dse.multipliers.builtin import builtin_multipliers
from dse.multipliers.core import METRIC_NAMES, Multiplier, exact_table, operand_values, table_metrics
from dse.multipliers.library import Library, default_library_dir, load_library

__all__ = [
    "METRIC_NAMES",
    "Library",
    "Multiplier",
    "builtin_multipliers",
    "default_library_dir",
    "exact_table",
    "load_library",
    "operand_values",
    "table_metrics",
]
