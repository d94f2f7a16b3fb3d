"""The prepare stage: float training, BatchNorm folding, conversion to approximate layers, calibration and
QAT, and the accuracies every later stage starts from.

- `dse.prepare.stage`: `prepare(study, out, data, device) -> PrepareResult`, which writes prepare/float.pt,
  prepare/qat.pt and prepare/result.json into the run directory (`dse.rundir.RunDir`); a stage whose inputs
  did not change is loaded, not recomputed, and an interrupted training resumes from its last finished
  epoch (prepare/*.partial.pt).
- `dse.prepare.records`: `PrepareResult` (what result.json holds and `dse prepare --json` prints), with
  its `PreparedFormat` and `PreparedLayer`s.
- `dse.prepare.load`: `Prepared` (the prepared model and its context, what every later stage starts
  from), `load_prepared`, `is_prepared`, and `open_run` (prepares first where needed).
"""

from dse.prepare.load import Prepared, is_prepared, load_prepared, open_run
from dse.prepare.records import PreparedFormat, PreparedLayer, PrepareResult
from dse.prepare.stage import prepare

__all__ = [
    "PrepareResult",
    "Prepared",
    "PreparedFormat",
    "PreparedLayer",
    "is_prepared",
    "load_prepared",
    "open_run",
    "prepare",
]
