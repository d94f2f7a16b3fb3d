"""The built-in multipliers as `Multiplier`s, generated in code (no table files are shipped).

The unsigned ones are computed from `dse.multipliers.catalogue`'s specs (circuits evaluated, formulas
applied) once per machine and kept in a disk cache; the signed ones are sign-magnitude wrappers of the
catalogue's `SIGNED_CORES`, built from the cores at load. The cache file is
`builtin-multipliers-v{BUILTIN_VERSION}-ag{ariths-gen version}.npz` in `$DSE_CACHE_DIR`, else
`$XDG_CACHE_HOME/dse`, else `~/.cache/dse`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from dse.multipliers.catalogue import SIGNED_CORES, UNSIGNED_SPECS, BuiltinSpec
from dse.multipliers.core import Multiplier, exact_table
from dse.multipliers.energy_model import signed_energy
from dse.multipliers.formulas import sign_magnitude_table
from dse.util import atomic_write_bytes

# Bump when any family definition, parameter list or cost table changes: it keys the on-disk cache.
BUILTIN_VERSION = "5"


def _cache_path() -> Path:
    base = os.environ.get("DSE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dse"
    )
    try:
        import ariths_gen

        ag = getattr(ariths_gen, "__version__", "")
    except ImportError:  # pragma: no cover
        ag = ""
    if not ag:
        from importlib.metadata import version

        ag = version("ariths-gen")
    return Path(base) / f"builtin-multipliers-v{BUILTIN_VERSION}-ag{ag}.npz"


def _compute(spec: BuiltinSpec) -> Multiplier:
    table, energy = spec.build()
    return Multiplier(
        spec.name, False, table, float(energy), spec.energy_method, "builtin", spec.multiplier_params
    )


def _load_cache(path: Path) -> list[Multiplier] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tables = z["tables"]
        if tables.shape != (len(meta), 256, 256):
            return None
        return [
            Multiplier(
                m["name"], False, tables[i], m["energy_rel"], m["energy_method"], "builtin", m["params"]
            )
            for i, m in enumerate(meta)
        ]
    except Exception:  # a missing, stale or corrupt cache is recomputed
        return None


def _save_cache(path: Path, entries: Sequence[Multiplier]) -> None:
    meta = [
        {"name": m.name, "params": m.params, "energy_rel": m.energy_rel, "energy_method": m.energy_method}
        for m in entries
    ]
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), tables=np.stack([m.lut for m in entries]).astype(np.int32))
    try:
        atomic_write_bytes(path, buf.getvalue())
        for stale in path.parent.glob("builtin-multipliers-v*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:  # a read-only home must not break the library
        pass


def unsigned_entries(
    specs: Sequence[BuiltinSpec] = UNSIGNED_SPECS, use_cache: bool = True
) -> list[Multiplier]:
    """The unsigned built-ins of `specs` (energy_rel as computed), from the disk cache when it holds
    exactly these names, else computed (circuits evaluated) and cached."""
    path = _cache_path()
    if use_cache:
        cached = _load_cache(path)
        if cached is not None and [m.name for m in cached] == [s.name for s in specs]:
            return cached
    entries = [_compute(s) for s in specs]
    if use_cache:
        _save_cache(path, entries)
    return entries


def signed_variant(core: Multiplier) -> Multiplier:
    """The sign-magnitude wrapper `<core without _u8>_s8` of an unsigned core."""
    return Multiplier(
        core.name[:-3] + "_s8",
        True,
        sign_magnitude_table(core.lut),
        signed_energy(core.energy_rel),
        "sign-magnitude wrapper: (E_core + E_sm) / (E_exact + E_sm); core " + core.energy_method,
        "builtin",
        {**core.params, "core": core.name, "wrapper": "sign-magnitude"},
    )


def builtin_multipliers() -> list[Multiplier]:
    """Every built-in multiplier: unsigned first (exact_u8 first), then signed (exact_s8 first).

    Built once per process (tables from the disk cache when valid); each call returns a new list."""
    return list(_builtin_tuple())


@lru_cache(maxsize=1)
def _builtin_tuple() -> tuple[Multiplier, ...]:
    # exact_u8 is 1.0 by definition, whatever its gate-count ratio rounds to
    unsigned = [replace(m, energy_rel=1.0) if m.name == "exact_u8" else m for m in unsigned_entries()]
    by_name = {m.name: m for m in unsigned}
    exact_s8 = Multiplier(
        "exact_s8", True, exact_table(signed=True), 1.0, "exact (definition)", "builtin", {"family": "exact"}
    )
    return (*unsigned, exact_s8, *(signed_variant(by_name[name]) for name in SIGNED_CORES))
