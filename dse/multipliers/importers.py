"""Import a file into the user library: EvoApprox-style C models (compiled and run by
`dse.multipliers.c_models`), TFApprox `.bin` tables and `.npy` / `.npz` tables -> a validated `Multiplier`.

Orientation (docs/REFERENCES.md, Conventions): the table comes out as `lut[activation_byte, weight_byte]`,
the first C argument (or the first array index) being the activation. `swap_operands=True` transposes, i.e.
makes the first C argument the *weight*. EvoApprox's evolved unsigned models are declared
`f(uint8_t B, uint8_t A)`; whether to swap is the user's choice (a multiplier used as f(weight, activation)
is a different hardware mapping).

Operand format: `signed` given explicitly wins; otherwise a C model's name and argument types decide (see
`dse.multipliers.c_models`); a table with any negative entry is signed, else unsigned.

Energy (`energy_rel`, relative to the exact multiplier of the same format): `energy_rel` given, else
`power_mw` given, else the C header's `// PDK45_PWR = … mW`, else an `energy_rel` scalar inside a `.npz`,
divided by the published exact 8-bit power in the same 45 nm technology: 0.391 mW unsigned, 0.425 mW signed.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from dse.multipliers.c_models import RUN_TIMEOUT_S, read_c_model
from dse.multipliers.core import Multiplier
from dse.multipliers.library import load_library, save_user_multiplier
from dse.util import UserError, atomic_write_bytes, sha256_bytes

EXACT_POWER_MW = {False: 0.391, True: 0.425}  # EvoApprox exact 8-bit multipliers, PDK45
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


# ---------------------------------------------------------------- validation --------------------------
def value_range(signed: bool) -> tuple[int, int]:
    """Allowed table values: uint16 for unsigned, int16 for signed (an 8x8 product fits 16 bits)."""
    return (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)


def validate_table(table: np.ndarray, signed: bool, what: str) -> np.ndarray:
    """Shape [256, 256], an integer dtype, values in the format's 16-bit range -> int32 copy."""
    table = np.asarray(table)
    if table.shape != (256, 256):
        raise UserError(f"{what}: expected a table of shape [256, 256], got {list(table.shape)}")
    if table.dtype.kind not in "iu":
        raise UserError(f"{what}: expected an integer table (int32/int16/uint16 …), got dtype {table.dtype}")
    lo, hi = value_range(signed)
    tmin, tmax = int(table.min()), int(table.max())
    if tmin < lo or tmax > hi:
        fmt = "signed" if signed else "unsigned"
        raise UserError(f"{what}: values must lie in [{lo}, {hi}] for a {fmt} table, found [{tmin}, {tmax}]")
    return table.astype(np.int32)


def validate_energy(value: float, what: str) -> float:
    """A finite energy or power >= 0. Zero is a circuit with no gates (EvoApprox publishes
    `PDK45_PWR = 0.000 mW` for its constant-output multipliers); negative, NaN and infinite are refused."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a number >= 0, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{what}: expected a finite number >= 0, got {value}")
    return value


def validate_name(name: str, what: str = "--name") -> str:
    if not NAME_RE.fullmatch(name):  # match() let a trailing newline through ($)
        raise UserError(
            f"{what} {name!r}: expected lowercase letters, digits, '_', '-' or '.', starting with a letter or "
            "digit, at most 80 characters"
        )
    return name


def default_name(stem: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]+", "_", stem.lower()).strip("_.-")
    return name or "imported"


def _energy(
    signed: bool, energy_rel: float | None, power_mw: float | None, published_mw: float | None, path: Path
) -> tuple[float, str]:
    exact = EXACT_POWER_MW[signed]
    fmt = "signed" if signed else "unsigned"
    if energy_rel is not None:
        return validate_energy(energy_rel, "--energy-rel"), "user: --energy-rel"
    if power_mw is not None:
        p = validate_energy(power_mw, "--power-mw")
        return p / exact, f"user power {p} mW / {exact} mW (exact {fmt} 8-bit, EvoApprox PDK45)"
    if published_mw is not None:
        p = validate_energy(published_mw, f"{path}: PDK45_PWR")
        return p / exact, f"published PDK45_PWR {p} mW / {exact} mW (exact {fmt} 8-bit, EvoApprox PDK45)"
    raise UserError(f"{path}: no energy figure in the file; give --energy-rel or --power-mw")


# ---------------------------------------------------------------- tables ------------------------------
def read_bin(path: Path, signed: bool | None) -> tuple[np.ndarray, bool, dict[str, Any]]:
    """TFApprox table: 256x256 uint16 little endian, row = first operand (int16 when signed)."""
    data = path.read_bytes()
    if len(data) != 256 * 256 * 2:
        raise UserError(
            f"{path}: a TFApprox .bin table must be 131072 bytes (256x256 uint16), got {len(data)}"
        )
    signed = bool(signed)
    table = np.frombuffer(data, dtype="<i2" if signed else "<u2").reshape(256, 256).astype(np.int64)
    return table, signed, {"format": "tfapprox-bin"}


def read_numpy(path: Path, signed: bool | None) -> tuple[np.ndarray, bool, dict[str, Any], float | None]:
    """`.npy` (one array) or `.npz` (array `lut`, or its only array; optional scalar `energy_rel`)."""
    energy = None
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                tables = [k for k in keys if k != "energy_rel"]
                if "lut" in keys:
                    key = "lut"
                elif len(tables) == 1:
                    key = tables[0]
                else:
                    raise UserError(
                        f"{path}: expected an array named 'lut' (or a single array), found {keys}"
                    )
                table = np.asarray(z[key])
                if "energy_rel" in keys:
                    energy = validate_energy(np.asarray(z["energy_rel"]).item(), f"{path}: energy_rel")
            fmt = "npz"
        else:
            table = np.load(path, allow_pickle=False)
            fmt = "npy"
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable numpy file ({e})") from None
    if not isinstance(table, np.ndarray):
        raise UserError(f"{path}: expected one array")
    if signed is None:
        signed = bool(table.dtype.kind in "iu" and table.size and table.min() < 0)
    return table, signed, {"format": fmt}, energy


# ---------------------------------------------------------------- entry point -------------------------
def import_multiplier(
    path: Path | str,
    *,
    signed: bool | None = None,
    name: str | None = None,
    energy_rel: float | None = None,
    power_mw: float | None = None,
    function: str | None = None,
    swap_operands: bool = False,
    timeout_s: float = RUN_TIMEOUT_S,
) -> Multiplier:
    """Read one file (`.c`, `.bin`, `.npy`, `.npz`) into a validated `Multiplier` (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if energy_rel is not None:
        validate_energy(energy_rel, "--energy-rel")
    if power_mw is not None:
        validate_energy(power_mw, "--power-mw")
    suffix = path.suffix.lower()
    published_mw = None
    file_energy = None
    if suffix == ".c":
        table, signed, params = read_c_model(path, signed=signed, function=function, timeout_s=timeout_s)
        pw = params["published"].get("PDK45_PWR")
        published_mw = pw if isinstance(pw, float) else None
        if pw is not None and published_mw is None and energy_rel is None and power_mw is None:
            raise UserError(
                f"{path}: PDK45_PWR = {pw!r} is not a power figure (expected a number of mW >= 0); "
                "give --energy-rel or --power-mw"
            )
        default = params["function"]
    elif function is not None:
        raise UserError(f"--function: only applies to C models, not {path.name}")
    elif suffix == ".bin":
        table, signed, params = read_bin(path, signed)
        default = path.stem
    elif suffix in (".npy", ".npz"):
        table, signed, params, file_energy = read_numpy(path, signed)
        default = path.stem
    else:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'}; expected .c, .bin, .npy or .npz")
    lut = validate_table(table, signed, str(path))
    if swap_operands:
        lut = np.ascontiguousarray(lut.T)
    if energy_rel is None and power_mw is None and published_mw is None and file_energy is not None:
        energy, method = file_energy, f"from the file ({path.name}: energy_rel)"
    else:
        energy, method = _energy(signed, energy_rel, power_mw, published_mw, path)
    name = validate_name(name) if name is not None else validate_name(default_name(default), f"{path}: name")
    params = {
        "file": path.name,
        "file_sha256": sha256_bytes(path.read_bytes()),
        **params,
        "swap_operands": swap_operands,
    }
    return Multiplier(name, signed, lut, energy, method, "imported", params)


def import_into_library(
    paths: list[Path | str],
    library_dir: Path,
    *,
    name: str | None = None,
    replace: bool = False,
    **kwargs: Any,
) -> list[Multiplier]:
    """Import every file, then (only when all succeeded) write them into the user library."""
    if not paths:
        raise UserError("import: give at least one FILE")
    if name is not None and len(paths) > 1:
        raise UserError("--name: only with a single FILE")
    imported = [import_multiplier(p, name=name, **kwargs) for p in paths]
    names = [m.name for m in imported]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(
            f"import: several files would be named {', '.join(dup)}; import them one by one with --name"
        )
    library = load_library(library_dir)
    for m in imported:
        if m.name in library:
            existing = library.get(m.name)
            if existing.source == "builtin":
                raise UserError(
                    f"--name {m.name}: a built-in multiplier has that name; choose another with --name"
                )
            if not replace:
                raise UserError(
                    f"--name {m.name}: already in the library {library_dir}; pass --replace to overwrite it "
                    "or --name to choose another name"
                )
    for m, p in zip(imported, paths):
        save_user_multiplier(m, library_dir, replace=replace)
        if "function" in m.params:  # a C model: keep its source for the hardware hand-off
            atomic_write_bytes(Path(library_dir) / f"{m.name}.c", Path(p).read_bytes())
    return imported


def table_to_npy_bytes(lut: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(lut, dtype=np.int32))
    return buf.getvalue()
