"""EvoApprox-style C models -> product tables: find the multiplier function, compile it with a driver
that calls it on all 65,536 operand pairs, run it and read the products back.

The first C argument is the first table index. Operand format: `signed` given explicitly wins; otherwise
the function's name `mul8s_*` / `mul8u_*`, then its argument types (`int8_t`/`signed char` -> signed,
`uint8_t`/`unsigned …` -> unsigned). Signed operands are fed to a signed C parameter as the values
-128..127, to an unsigned parameter type as their byte (0..255, no sign extension into higher bits). A
signed model whose result type is unsigned has its result read as int16 (the low 16 bits in two's
complement), as EvoApprox's signed models need. `// KEY = value` header lines are kept as published
metadata (EvoApprox's `PDK45_PWR = … mW` gives the energy).

A C model is code compiled and run as the user (trust it as such); the driver still runs fenced in: in a
session and process group of its own (the whole group is killed at the time limit and after the driver
exits, so a `fork()`ed child cannot outlive the import), under CPU-time, address-space, file-size and
process-count limits (`DRIVER_*`), with its stdout/stderr written to a file capped at
`DRIVER_OUTPUT_BYTES` (a model that prints without end is stopped, not buffered in memory).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dse.util import UserError

COMPILE_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 10.0
DRIVER_MEMORY_BYTES = 1 << 30  # address space of the driver (its table is 512 KiB)
DRIVER_OUTPUT_BYTES = 1 << 20  # stdout + stderr, and any file it writes (the table file is 512 KiB)
DRIVER_PROCESSES = 0  # processes it may fork (RLIMIT_NPROC; not enforced for root: the group kill is)

_HEADER_RE = re.compile(r"^\s*//\s*([A-Za-z][A-Za-z0-9_%]*)\s*=\s*(.*?)\s*$")
_FUNC_RE = re.compile(
    r"(?P<pre>^|[;}\n])\s*(?P<ret>(?:[A-Za-z_]\w*[\s*]+)+?)(?P<name>[A-Za-z_]\w*)\s*\((?P<args>[^()]*)\)\s*\{",
    re.M,
)
_INT_WORDS = {"int", "char", "short", "long", "signed", "unsigned", "const", "register", "volatile"}
_INT_TYPEDEF = re.compile(r"^u?int(8|16|32|64)_t$")


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


@dataclass(frozen=True)
class CFunction:
    """A candidate multiplier in a C file: a non-static function of two integer parameters."""

    name: str
    return_type: str
    arg_types: tuple[str, str]
    arg_names: tuple[str, str]  # "" for an unnamed parameter


def find_functions(text: str) -> list[CFunction]:
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
        (t0, n0), (t1, n1) = (_split_param(p) for p in params)
        if not (_is_int_type(ret) and _is_int_type(t0) and _is_int_type(t1)):
            continue
        found.append(CFunction(m.group("name"), ret, (t0, t1), (n0, n1)))
    return found


def _type_is_unsigned(decl: str) -> bool:
    return "unsigned" in decl.split() or bool(re.search(r"\buint\d+_t\b", decl))


def _infer_signed(fn: CFunction, path: Path) -> bool:
    name = fn.name.lower()
    if re.match(r"^mul\d+s", name):
        return True
    if re.match(r"^mul\d+u", name):
        return False
    arg = fn.arg_types[0]
    if _type_is_unsigned(arg):
        return False
    if re.search(r"\bint8_t\b", arg) or "signed" in arg.split():
        return True
    raise UserError(
        f"{path}: cannot tell whether {fn.name} is signed or unsigned; pass --signed or --unsigned"
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


def _driver_limits(timeout_s: float) -> None:
    """In the driver's process before exec: CPU seconds, address space, file size, process count."""
    import resource

    cpu = int(math.ceil(timeout_s)) + 1
    for limit, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, DRIVER_MEMORY_BYTES),
        (resource.RLIMIT_FSIZE, DRIVER_OUTPUT_BYTES),
        (resource.RLIMIT_NPROC, DRIVER_PROCESSES),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def _run_driver(argv: list[str], cwd: Path, timeout_s: float, path: Path) -> int:
    """Run the compiled driver fenced in (see the module docstring); its exit status (negative: signal).
    Its process group is killed whatever happens, so nothing it started survives this call."""
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UserError(f"--timeout: expected a positive finite number of seconds, got {timeout_s}")
    with open(cwd / "output.txt", "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own session and process group (pgid = its pid)
            preexec_fn=lambda: _driver_limits(timeout_s),
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{path}: the C model did not finish all 65,536 products within {timeout_s:g} s (does it loop?)"
            ) from None
        finally:
            _kill_group(proc.pid)
            proc.wait()


def _last_line(path: Path, limit: int = 200) -> str:
    """The last non-empty line of the driver's (capped) output, shortened to `limit` characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def _run_c_model(source: bytes, fn: CFunction, signed: bool, path: Path, timeout_s: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="dse-cimport-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "model.c").write_bytes(source)
        (tmpdir / "driver.c").write_text(_DRIVER)
        exe = tmpdir / "driver"
        # signed operands: the value -128..127 for a signed parameter type, the two's-complement byte for an
        # unsigned one (an 8-bit circuit model on uint64_t must not see sign-extended high bits)
        sx, sy = (int(signed and not _type_is_unsigned(t)) for t in fn.arg_types)
        cmd = ["cc", "-O1", "-w", f"-DFUNC={fn.name}", f"-DSIGNED_X={sx}", f"-DSIGNED_Y={sy}"]
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
        returncode = _run_driver([str(exe), str(out_file)], tmpdir, timeout_s, path)
        if returncode == -signal.SIGXFSZ:
            raise UserError(
                f"{path}: the C model wrote more than {DRIVER_OUTPUT_BYTES >> 20} MiB (output or files); "
                "stopped"
            )
        if returncode != 0:
            how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            last = _last_line(tmpdir / "output.txt")
            raise UserError(
                f"{path}: the C model crashed while computing the table ({how}{': ' + last if last else ''})"
            )
        raw = np.fromfile(out_file, dtype="<i8")
    if raw.size != 65536:
        raise UserError(f"{path}: the C model produced {raw.size} products instead of 65,536")
    table = raw.reshape(256, 256)
    if signed and _type_is_unsigned(fn.return_type):
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
        chosen = [f for f in functions if f.name == function]
        if not chosen:
            names = ", ".join(f.name for f in functions) or "none"
            raise UserError(
                f"{path}: no non-static function {function!r} with two integer arguments (found: {names})"
            )
        fn = chosen[0]
    elif len(functions) == 1:
        fn = functions[0]
    elif not functions:
        raise UserError(f"{path}: defines no non-static function with two integer arguments (a multiplier)")
    else:
        names = ", ".join(f.name for f in functions)
        raise UserError(f"{path}: several candidate functions ({names}); choose one with --function")
    if signed is None:
        signed = _infer_signed(fn, path)
    table = _run_c_model(source, fn, signed, path, timeout_s)
    params = {
        "format": "c",
        "function": fn.name,
        "return_type": fn.return_type,
        "arg_types": list(fn.arg_types),
        "arg_names": list(fn.arg_names),
        "published": parse_header(text),
    }
    return table, signed, params
