"""Small shared helpers: user-facing errors, atomic writes, JSON output, progress bars, devices, threads."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import torch


class UserError(Exception):
    """Bad user input (file, field, value). The CLI prints it as one line and exits with code 2."""


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and a rename: never half-written."""
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, Paths and non-finite floats into plain JSON values (NaN/inf -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# what torch.load raises for a missing, truncated or garbage file (its legacy unpickler fails with
# IndexError / KeyError / TypeError on random bytes): callers that recompute or report null catch these
UNREADABLE_CHECKPOINT: tuple[type[BaseException], ...] = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
)


def load_checkpoint(path: Path | str, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """A torch checkpoint of a run directory, loaded with `weights_only=True`: tensors and plain data only
    (what dse writes). A file that holds anything else (a pickle that would run code) is refused with a
    one-line UserError before any of it runs. Other read errors (missing, truncated) propagate as they are."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: {what} refused: it holds objects other than tensors and plain data, which dse never "
            "writes (loading it could run code); delete it to recompute that stage"
        ) from None


def read_json(path: Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: expected a {what}, found a directory") from None


def emit_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout (the `--json` contract)."""
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def progress(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", **kw: Any
) -> Any:
    """A tqdm progress bar on stderr (stdout stays clean for --json). Hidden when DSE_NO_PROGRESS=1."""
    from tqdm.auto import tqdm

    disable = os.environ.get("DSE_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw)


def log(msg: str) -> None:
    """Human-readable status line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def resolve_device(name: str = "auto") -> torch.device:
    """'cpu' | 'cuda' | 'auto' -> torch.device; a clear error when CUDA is asked for and absent."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name}: expected cpu, cuda or auto")
    return torch.device(name)


def set_threads(threads: int | None = None) -> None:
    """CPU threads for torch; BLAS (numpy/scipy) always one. Every compute command calls this first.

    Default: torch's own (one thread per core). Measured on a quiet 2-core machine: two threads simulate a
    fashion_resnet20 candidate (2,000 images) in 3.7-4.9 s against 6.2-7.9 s for one, while the default
    digits search takes 69 s against 67 s (its layers are too small to share); beside one busy process,
    though, two threads took 11 s against one's 7.3 s (one thread waits for the other at every layer), so
    on a busy machine pass `--threads 1`.
    Letting OpenMP's idle threads sleep (OMP_WAIT_POLICY=PASSIVE) fixes the busy case (7.5 s) but made the
    small studies 1.4x slower (digits: 51 s), so it is not set.

    The limit reaches only the BLAS libraries loaded when it is set, and scipy ships its own OpenBLAS
    beside numpy's, loaded with scipy.linalg: so that is imported first. (Before, the surrogate's fits ran
    scipy's SVDs on every core: on the 2-core machine beside two busy searches 53 ms per SVD against 1.6 ms
    on one thread, 44 of a digits search's 86 s.)"""
    import scipy.linalg  # noqa: F401  # loads scipy's own OpenBLAS, so that the limit below reaches it
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1, user_api="blas")
    if threads is not None and threads <= 0:
        raise UserError(f"--threads {threads}: expected a positive number")
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
