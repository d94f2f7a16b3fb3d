"""The retrain stage: recover the accuracy an assignment loses by a short retraining.

- `surrogates`: P2's per-neuron error model and the baselines (what the network trains through);
- `statistics`: the per-neuron error statistics they are built from, measured by behavioural simulation;
- `loop`: one retraining (`retrain`) and its typed result (`RetrainResult`);
- `compare`: the methods side by side and the cross-evaluation matrix.

The assignment comes from a configuration JSON through `dse.hwconfig` (`read_assignment_file`,
`resolve_assignment`).
"""

from dse.retrain.compare import CrossEvaluation, MethodComparison, compare_methods, cross_evaluate
from dse.retrain.loop import RetrainResult, load_retrained, load_run, retrain
from dse.retrain.statistics import CALIBRATION_SAMPLES, LayerErrorStats, measure_error_stats
from dse.retrain.surrogates import METHODS, build_surrogates

__all__ = [
    "CALIBRATION_SAMPLES",
    "METHODS",
    "CrossEvaluation",
    "LayerErrorStats",
    "MethodComparison",
    "RetrainResult",
    "build_surrogates",
    "compare_methods",
    "cross_evaluate",
    "load_retrained",
    "load_run",
    "measure_error_stats",
    "retrain",
]
