"""Importers: EvoApprox-style C models, TFApprox `.bin` tables and `.npy` / `.npz` tables -> `Multiplier`.

Orientation (docs/REFERENCES.md, Conventions): the table comes out as `lut[activation_byte, weight_byte]`,
the first C argument (or the first array index) being the activation. `swap_operands=True` transposes, i.e. makes the first C
argument the *weight*. EvoApprox's evolved unsigned models are declared `f(uint8_t B, uint8_t A)`; whether
to swap is the user's choice (a multiplier used as f(weight, activation) is a different hardware mapping).

Operand format: `signed` given explicitly wins; otherwise a C model's name `mul8s_*` / `mul8u_*`, then its
argument types (`int8_t`/`signed char` -> signed, `uint8_t`/`unsigned …` -> unsigned); a table with any
negative entry is signed, else unsigned. Signed operands are fed to a signed C parameter as the values
-128..127; a signed model whose result type is unsigned has
its result read as int16 (the low 16 bits in two's complement), as EvoApprox's signed models need. A signed
operand goes to an unsigned parameter type as its byte (0..255, no sign extension into higher bits).

Energy (`energy_rel`, relative to the exact multiplier of the same format): `energy_rel` given, else
`power_mw` given, else the C header's `// PDK45_PWR = … mW`, else an `energy_rel` scalar inside a `.npz`,
divided by the published exact 8-bit power in the same 45 nm technology: 0.391 mW unsigned, 0.425 mW signed.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dse.multipliers.core import Multiplier
from dse.util import UserError, sha256_bytes

EXACT_POWER_MW = {False: 0.391, True: 0.425}  # EvoApprox exact 8-bit multipliers, PDK45
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
COMPILE_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 10.0

_HEADER_RE = re.compile(r"^\s*//\s*([A-Za-z][A-Za-z0-9_%]*)\s*=\s*(.*?)\s*$")
_FUNC_RE = re.compile(
    r"(?P<pre>^|[;}\n])\s*(?P<ret>(?:[A-Za-z_]\w*[\s*]+)+?)(?P<name>[A-Za-z_]\w*)\s*\((?P<args>[^()]*)\)\s*\{",
    re.M,
)
_INT_WORDS = {"int", "char", "short", "long", "signed", "unsigned", "const", "register", "volatile"}
_INT_TYPEDEF = re.compile(r"^u?int(8|16|32|64)_t$")


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
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a positive number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what}: expected a positive finite number, got {value}")
    return value


def validate_name(name: str, what: str = "--name") -> str:
    if not NAME_RE.match(name):
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


# ---------------------------------------------------------------- C models ----------------------------
def parse_header(text: str) -> dict[str, Any]:
    """`// KEY = value` lines -> {KEY: float or string}; a number with a unit keeps only the number."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _HEADER_RE.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2)
        num = re.match(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value)
        out[key] = float(num.group(0)) if num else value
    return out


def _is_int_type(decl: str) -> bool:
    words = [w for w in re.split(r"\s+", decl.replace("*", " * ").strip()) if w]
    if "*" in words or not words:
        return False
    return all(w in _INT_WORDS or _INT_TYPEDEF.match(w) for w in words)


def _split_param(param: str) -> tuple[str, str]:
    """'uint8_t A' -> ('uint8_t', 'A'); an unnamed 'uint8_t' -> ('uint8_t', '')."""
    words = param.split()
    if len(words) >= 2 and not _INT_TYPEDEF.match(words[-1]) and words[-1] not in _INT_WORDS:
        return " ".join(words[:-1]), words[-1]
    return " ".join(words), ""


def find_functions(text: str) -> list[dict[str, Any]]:
    """Non-static function definitions with two integer parameters and an integer result."""
    code = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    code = re.sub(r"//[^\n]*", " ", code)
    code = re.sub(r"^\s*#[^\n]*", " ", code, flags=re.M)
    found = []
    for m in _FUNC_RE.finditer(code):
        ret = " ".join(m.group("ret").split())
        if re.search(r"\b(static|inline)\b", ret) or m.group("name") in {"if", "while", "for", "switch"}:
            continue
        params = [p.strip() for p in m.group("args").split(",") if p.strip()]
        if len(params) != 2:
            continue
        types = [_split_param(p) for p in params]
        if not (_is_int_type(ret) and all(_is_int_type(t) for t, _ in types)):
            continue
        found.append(
            {
                "name": m.group("name"),
                "return_type": ret,
                "arg_types": [t for t, _ in types],
                "arg_names": [n for _, n in types],
            }
        )
    return found


def _type_is_unsigned(decl: str) -> bool:
    return "unsigned" in decl.split() or bool(re.search(r"\buint\d+_t\b", decl))


def _infer_signed(fn: dict[str, Any], path: Path) -> bool:
    name = fn["name"].lower()
    if re.match(r"^mul\d+s", name):
        return True
    if re.match(r"^mul\d+u", name):
        return False
    arg = fn["arg_types"][0]
    if _type_is_unsigned(arg):
        return False
    if re.search(r"\bint8_t\b", arg) or "signed" in arg.split():
        return True
    raise UserError(
        f"{path}: cannot tell whether {fn['name']} is signed or unsigned; pass --signed or --unsigned"
    )


_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.c"
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "wb");
    if (!f) return 3;
    static long long out[65536];
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++) {
            int x = SIGNED_X ? (a >= 128 ? a - 256 : a) : a;
            int y = SIGNED_Y ? (b >= 128 ? b - 256 : b) : b;
            out[a * 256 + b] = (long long)(FUNC(x, y));
        }
    if (fwrite(out, sizeof(long long), 65536, f) != 65536) return 4;
    return fclose(f) == 0 ? 0 : 5;
}
"""


def _run_c_model(source: bytes, fn: dict[str, Any], signed: bool, path: Path, timeout_s: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="dse-cimport-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "model.c").write_bytes(source)
        (tmpdir / "driver.c").write_text(_DRIVER)
        exe = tmpdir / "driver"
        # signed operands: the value -128..127 for a signed parameter type, the two's-complement byte for an
        # unsigned one (an 8-bit circuit model on uint64_t must not see sign-extended high bits)
        sx, sy = (int(signed and not _type_is_unsigned(t)) for t in fn["arg_types"])
        cmd = ["cc", "-O1", "-w", f"-DFUNC={fn['name']}", f"-DSIGNED_X={sx}", f"-DSIGNED_Y={sy}"]
        cmd += ["-o", str(exe), "driver.c"]
        try:
            res = subprocess.run(cmd, cwd=tmpdir, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except FileNotFoundError:
            raise UserError(
                f"{path}: the system C compiler `cc` was not found (install gcc or clang)"
            ) from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{path}: compiling took longer than {COMPILE_TIMEOUT_S:.0f} s") from None
        if res.returncode != 0:
            first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:200])
            first = first.replace(str(tmpdir) + "/", "").replace("model.c", path.name)
            raise UserError(f"{path}: does not compile with cc: {first.strip()}")
        out_file = tmpdir / "table.bin"
        try:
            run = subprocess.run(
                [str(exe), str(out_file)], cwd=tmpdir, capture_output=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{path}: the C model did not finish all 65,536 products within {timeout_s:g} s (does it loop?)"
            ) from None
        if run.returncode != 0:
            how = f"signal {-run.returncode}" if run.returncode < 0 else f"exit code {run.returncode}"
            raise UserError(f"{path}: the C model crashed while computing the table ({how})")
        raw = np.fromfile(out_file, dtype="<i8")
    if raw.size != 65536:
        raise UserError(f"{path}: the C model produced {raw.size} products instead of 65,536")
    table = raw.reshape(256, 256)
    if signed and _type_is_unsigned(fn["return_type"]):
        table = (table & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.int64)
    return table


def read_c_model(
    path: Path, *, signed: bool | None = None, function: str | None = None, timeout_s: float = RUN_TIMEOUT_S
) -> tuple[np.ndarray, bool, dict[str, Any]]:
    """Compile and run a C model -> (table int64 [first arg, second arg], signed, params)."""
    source = path.read_bytes()
    text = source.decode("utf-8", errors="replace")
    functions = find_functions(text)
    if function is not None:
        chosen = [f for f in functions if f["name"] == function]
        if not chosen:
            names = ", ".join(f["name"] for f in functions) or "none"
            raise UserError(
                f"{path}: no non-static function {function!r} with two integer arguments (found: {names})"
            )
        fn = chosen[0]
    elif len(functions) == 1:
        fn = functions[0]
    elif not functions:
        raise UserError(f"{path}: defines no non-static function with two integer arguments (a multiplier)")
    else:
        names = ", ".join(f["name"] for f in functions)
        raise UserError(f"{path}: several candidate functions ({names}); choose one with --function")
    if signed is None:
        signed = _infer_signed(fn, path)
    table = _run_c_model(source, fn, signed, path, timeout_s)
    params = {
        "format": "c",
        "function": fn["name"],
        "return_type": fn["return_type"],
        "arg_types": fn["arg_types"],
        "arg_names": fn["arg_names"],
        "published": parse_header(text),
    }
    return table, signed, params


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
    from dse.multipliers.library import load_library, save_user_multiplier

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
    for m in imported:
        save_user_multiplier(m, library_dir, replace=replace)
    return imported


def table_to_npy_bytes(lut: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(lut, dtype=np.int32))
    return buf.getvalue()
