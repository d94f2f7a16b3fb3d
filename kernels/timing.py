"""One wall-clock timer for everything that measures kernels: the backend race (`dispatch`), `dse bench
kernels` (`bench`) and `dse bench model` (`dse.benchmark`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def wall_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of fn(), with CUDA work finished before and after (kernel launches are
    asynchronous: without the synchronisation a CUDA call would time its launch only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t
