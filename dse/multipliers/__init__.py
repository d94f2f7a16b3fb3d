"""The multiplier library: the `Multiplier` type, built-in families, importers, the user library."""

from dse.multipliers.core import METRIC_NAMES, Multiplier, exact_table, operand_values, table_metrics

__all__ = ["METRIC_NAMES", "Multiplier", "exact_table", "operand_values", "table_metrics"]
