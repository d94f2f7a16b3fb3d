"""Importing multipliers (C, TFApprox .bin, .npy/.npz) and the `dse multipliers` commands, bad input included."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from dse.cli import cli
from dse.multipliers import exact_table, load_library
from dse.multipliers.c_models import find_functions, parse_header
from dse.multipliers.importers import import_multiplier

U = np.arange(256, dtype=np.int64)
ASYM = np.outer(U, U) + (U[:, None] >> 4)  # depends on which operand is first: proves orientation

EVO_UNSIGNED = """/***
* EvoApprox-style model (written by the test)
***/
// MAE% = 0.0018 %
// MAE = 1.2
// WCE% = 0.0061 %
// PDK45_PWR = 0.387 mW
// PDK45_AREA = 717.5 um2

#include <stdint.h>
#include <stdlib.h>

static uint16_t helper(uint16_t x, uint16_t y) { return x * y; }

uint16_t mul8u_TST(uint8_t B, uint8_t A)
{
  uint16_t P;
  P = helper(B, A) + (B >> 4);
  return P;
}
"""

SIGNED_UNSIGNED_RESULT = """// PDK45_PWR = 0.300 mW
#include <stdint.h>
uint16_t mul8s_TST(uint8_t A, uint8_t B)
{
  int16_t p = (int16_t)((int8_t)A) * (int16_t)((int8_t)B);
  if (A == 0x80 && B == 0x80) p = 16383;
  return (uint16_t)(p - 1);
}
"""


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def assert_bad(result, lib, *fragments):
    """Exit code 2, one error line on stderr, nothing on stdout, nothing in the library."""
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err
    assert result.stdout == ""
    assert not lib.exists() or not any(lib.iterdir())


# ---------------------------------------------------------------- round trips -----------------------------
def test_c_round_trip_orientation_header_and_energy(tmp_path):
    src = write(tmp_path, "mul8u_tst.c", EVO_UNSIGNED)
    lib = tmp_path / "lib"
    r = run(["multipliers", "import", str(src), "--library", str(lib), "--json"])
    assert r.exit_code == 0, r.output
    (obj,) = json.loads(r.stdout)
    assert obj["name"] == "mul8u_tst" and obj["signed"] is False and obj["source"] == "imported"
    assert obj["energy_rel"] == pytest.approx(0.387 / 0.391)
    assert "PDK45_PWR" in obj["energy_method"]
    assert obj["params"]["published"]["MAE%"] == pytest.approx(0.0018)
    assert obj["params"]["published"]["PDK45_PWR"] == pytest.approx(0.387)
    m = load_library(lib).get("mul8u_tst")
    assert np.array_equal(m.lut, ASYM)  # first C argument = first index (activation)
    assert obj["lut_sha256"] == m.sha256 and obj["mae"] == pytest.approx(m.metrics["mae"])
    swapped = import_multiplier(src, swap_operands=True)
    assert np.array_equal(swapped.lut, ASYM.T)


def test_signed_c_model_with_unsigned_result_is_read_as_int16(tmp_path):
    src = write(tmp_path, "s.c", SIGNED_UNSIGNED_RESULT)
    m = import_multiplier(src, name="s_tst")
    assert m.signed  # from the mul8s_ name although the argument types are uint8_t
    expect = exact_table(True).astype(np.int64) - 1
    expect[0x80, 0x80] = 16382
    assert np.array_equal(m.lut, expect)
    assert m.lut.min() < 0 and m.energy_rel == pytest.approx(0.300 / 0.425)
    assert m.metrics["mean_error"] == pytest.approx(-1 - 1 / 65536)


@pytest.mark.parametrize(
    "text",
    [
        # 8-bit circuit model on uint64_t: a sign-extended operand would reach the `A > 255` branch
        "#include <stdint.h>\nuint64_t mul8s_w(const uint64_t B, const uint64_t A) {\n"
        "  if (A > 255 || B > 255) return 12345;\n"
        "  return (uint16_t)((int16_t)(int8_t)B * (int16_t)(int8_t)A); }\n",
        # signed parameter type: gets the values -128..127
        "int mul8s_i(int a, int b) { return a * b; }\n",
    ],
)
def test_signed_c_operands_follow_the_parameter_type(tmp_path, text):
    m = import_multiplier(write(tmp_path, "m.c", text), energy_rel=1.0)
    assert m.signed and np.array_equal(m.lut, exact_table(True))


def test_c_function_chosen_by_name_when_several(tmp_path):
    text = "int f1(int a, int b) { return a * b; }\nint f2(int a, int b) { return a * b + 1; }\n"
    src = write(tmp_path, "two.c", text)
    with pytest.raises(Exception, match="--function"):
        import_multiplier(src, signed=False, energy_rel=0.5)
    m = import_multiplier(src, signed=False, energy_rel=0.5, function="f2")
    assert np.array_equal(m.lut, np.outer(U, U) + 1) and m.name == "f2"


def test_find_functions_and_header_parsing():
    fns = find_functions(EVO_UNSIGNED)
    assert [f.name for f in fns] == ["mul8u_TST"] and fns[0].arg_names == ("B", "A")
    h = parse_header(EVO_UNSIGNED)
    assert h["PDK45_AREA"] == pytest.approx(717.5) and h["WCE%"] == pytest.approx(0.0061)


def test_bin_round_trip_unsigned_and_signed(tmp_path):
    lib = tmp_path / "lib"
    p = tmp_path / "axm.bin"
    p.write_bytes(ASYM.astype("<u2").tobytes())
    r = run(["multipliers", "import", str(p), "--power-mw", "0.2", "--library", str(lib), "--json"])
    assert r.exit_code == 0, r.output
    (obj,) = json.loads(r.stdout)
    assert obj["energy_rel"] == pytest.approx(0.2 / 0.391) and obj["signed"] is False
    assert np.array_equal(load_library(lib).get("axm").lut, ASYM)  # row = first operand
    s = tmp_path / "sgn.bin"
    s.write_bytes(exact_table(True).astype("<i2").tobytes())
    m = import_multiplier(s, signed=True, power_mw=0.2)
    assert np.array_equal(m.lut, exact_table(True)) and m.energy_rel == pytest.approx(0.2 / 0.425)


def test_npy_round_trip_and_export_are_identical(tmp_path):
    lib = tmp_path / "lib"
    p = tmp_path / "my_mul.npy"
    np.save(p, ASYM.astype(np.int32))
    r = run(
        ["multipliers", "import", str(p), "--energy-rel", "0.42", "--name", "asym_u8", "--library", str(lib)]
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "back.npy"
    r = run(["multipliers", "export", "asym_u8", "-o", str(out), "--library", str(lib)])
    assert r.exit_code == 0, r.output
    back = np.load(out)
    assert back.dtype == np.int32 and back.shape == (256, 256) and np.array_equal(back, ASYM)
    m = load_library(lib).get("asym_u8")
    assert m.energy_rel == 0.42 and m.energy_method == "user: --energy-rel" and not m.signed


def test_npz_with_energy_and_signed_inference(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, lut=exact_table(True).astype(np.int16), energy_rel=np.float64(0.7))
    m = import_multiplier(p)
    assert m.signed and m.energy_rel == 0.7 and m.is_exact


def test_export_of_builtin_and_replace(tmp_path):
    out = tmp_path / "d.npy"
    assert (
        run(["multipliers", "export", "drum4_s8", "-o", str(out), "--library", str(tmp_path / "l")]).exit_code
        == 0
    )
    assert np.array_equal(np.load(out), load_library(tmp_path / "l").get("drum4_s8").lut)
    lib = tmp_path / "lib"
    p = tmp_path / "a.npy"
    np.save(p, ASYM.astype(np.int32))
    args = ["multipliers", "import", str(p), "--energy-rel", "0.5", "--library", str(lib)]
    assert run(args).exit_code == 0
    np.save(p, np.outer(U, U).astype(np.int32))
    assert run(args).exit_code == 2
    assert run([*args, "--replace"]).exit_code == 0
    assert load_library(lib).get("a").is_exact


# ---------------------------------------------------------------- bad input -------------------------------
def _npy(tmp_path, arr, name="bad.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return p


BAD_C = {
    "syntax.c": ("uint16_t mul8u_x(uint8_t A, uint8_t B) { return A * B }\n", "does not compile"),
    "nofunc.c": (
        "#include <stdint.h>\nint one(int a) { return a; }\nstatic int two(int a, int b) { return a; }\n",
        "no non-static function",
    ),
    "crash.c": (
        "#include <stdlib.h>\nint mul8u_c(int a, int b) { if (a == 7) abort(); return a * b; }\n",
        "crashed",
    ),
    "loop.c": (
        "int mul8u_l(int a, int b) { volatile int x = 0; while (a == 9) x++; return a * b; }\n",
        "did not finish",
    ),
}


@pytest.mark.parametrize("fname", sorted(BAD_C))
def test_bad_c_models(tmp_path, fname):
    text, fragment = BAD_C[fname]
    src = write(tmp_path, fname, text)
    lib = tmp_path / "lib"
    r = run(
        ["multipliers", "import", str(src), "--energy-rel", "0.5", "--timeout", "1", "--library", str(lib)]
    )
    assert_bad(r, lib, fragment, fname)


@pytest.mark.parametrize(
    "case",
    [
        "shape",
        "dtype",
        "range_u",
        "range_s",
        "bin_size",
        "suffix",
        "no_energy",
        "npz_keys",
        "bad_name",
        "builtin",
    ],
)
def test_bad_tables(tmp_path, case):
    lib = tmp_path / "lib"
    extra = ["--energy-rel", "0.5"]
    if case == "shape":
        p, frag = _npy(tmp_path, np.zeros((256, 255), np.int32)), "[256, 256]"
    elif case == "dtype":
        p, frag = _npy(tmp_path, np.zeros((256, 256), np.float32)), "dtype float32"
    elif case == "range_u":
        a = np.outer(U, U).astype(np.int32)
        a[1, 1] = 70000
        p, frag = _npy(tmp_path, a), "[0, 65535]"
    elif case == "range_s":
        a = exact_table(True).copy()
        a[1, 1] = -40000
        p, frag = _npy(tmp_path, a), "[-32768, 32767]"
        extra += ["--signed"]
    elif case == "bin_size":
        p = tmp_path / "t.bin"
        p.write_bytes(b"\0" * 1000)
        frag = "131072 bytes"
    elif case == "suffix":
        p = write(tmp_path, "t.txt", "1 2 3")
        frag = "unknown file type"
    elif case == "no_energy":
        p, frag, extra = _npy(tmp_path, np.outer(U, U).astype(np.int32)), "--energy-rel", []
    elif case == "npz_keys":
        p = tmp_path / "t.npz"
        np.savez(p, x=np.zeros((256, 256), np.int32), y=np.zeros((256, 256), np.int32))
        frag = "'lut'"
    elif case == "bad_name":
        p, frag = _npy(tmp_path, np.outer(U, U).astype(np.int32)), "lowercase"
        extra += ["--name", "Bad Name"]
    else:
        p, frag = _npy(tmp_path, np.outer(U, U).astype(np.int32)), "built-in"
        extra += ["--name", "exact_u8"]
    r = run(["multipliers", "import", str(p), *extra, "--library", str(lib)])
    assert_bad(r, lib, frag)


@pytest.mark.parametrize(
    "opt,value",
    [
        ("--energy-rel", "-1"),
        ("--energy-rel", "-0.001"),
        ("--energy-rel", "nan"),
        ("--energy-rel", "inf"),
        ("--power-mw", "-0.5"),
        ("--power-mw", "nan"),
    ],
)
def test_bad_energy(tmp_path, opt, value):
    lib = tmp_path / "lib"
    p = _npy(tmp_path, np.outer(U, U).astype(np.int32))
    r = run(["multipliers", "import", str(p), opt, value, "--library", str(lib)])
    assert_bad(r, lib, opt)


@pytest.mark.parametrize("power", ["-0.1", "-2"])
def test_bad_published_power_in_c_header(tmp_path, power):
    lib = tmp_path / "lib"
    src = write(
        tmp_path, "z.c", f"// PDK45_PWR = {power} mW\nint mul8u_z(int a, int b) {{ return a * b; }}\n"
    )
    assert_bad(run(["multipliers", "import", str(src), "--library", str(lib)]), lib, "PDK45_PWR")


def test_zero_power_constant_circuit_imports_in_a_batch(tmp_path):
    """EvoApprox publishes PDK45_PWR = 0.000 mW for constant-output circuits (mul8u_199Z, mul8u_TD3): a
    circuit with no gates, energy 0, imported together with the rest of its set."""
    lib = tmp_path / "lib"
    zero = write(
        tmp_path, "mul8u_td3.c", "// PDK45_PWR = 0.000 mW\nint mul8u_TD3(int a, int b) { return 0; }\n"
    )
    other = write(tmp_path, "mul8u_tst.c", EVO_UNSIGNED)
    r = run(["multipliers", "import", str(zero), str(other), "--library", str(lib), "--json"])
    assert r.exit_code == 0, r.output
    by = {m.name: m for m in load_library(lib)}
    assert by["mul8u_td3"].energy_rel == 0.0 and not by["mul8u_td3"].lut.any()
    assert not by["mul8u_td3"].dominated and by["mul8u_tst"].energy_rel == pytest.approx(0.387 / 0.391)


def test_existing_name_says_how_to_replace(tmp_path):
    lib = tmp_path / "lib"
    p = _npy(tmp_path, np.outer(U, U).astype(np.int32), "m.npy")
    args = ["multipliers", "import", str(p), "--energy-rel", "0.5", "--library", str(lib)]
    assert run(args).exit_code == 0
    before = sorted(f.name for f in lib.iterdir())
    r = run(args)
    assert r.exit_code == 2 and "--replace" in r.stderr and r.stderr.count("\n") == 1
    assert sorted(f.name for f in lib.iterdir()) == before


def test_a_failing_file_in_a_batch_writes_nothing(tmp_path):
    lib = tmp_path / "lib"
    good = _npy(tmp_path, np.outer(U, U).astype(np.int32), "good.npy")
    bad = _npy(tmp_path, np.zeros((3, 3), np.int32), "bad.npy")
    assert_bad(
        run(["multipliers", "import", str(good), str(bad), "--energy-rel", "0.5", "--library", str(lib)]), lib
    )


@pytest.mark.parametrize("cmd", [["show", "drum4_u9"], ["export", "drum4_u9", "-o", "x.npy"]])
def test_unknown_name_in_show_and_export(tmp_path, cmd):
    lib = tmp_path / "lib"
    out = tmp_path / "x.npy"
    args = ["multipliers", *cmd, "--library", str(lib)]
    args = [str(out) if a == "x.npy" else a for a in args]
    r = run(args)
    assert_bad(r, lib, "drum4_u9", "drum4_u8")
    assert not out.exists()


def test_export_needs_npy_suffix(tmp_path):
    out = tmp_path / "x.txt"
    r = run(["multipliers", "export", "exact_u8", "-o", str(out), "--library", str(tmp_path / "lib")])
    assert r.exit_code == 2 and ".npy" in r.stderr and not out.exists()


# ---------------------------------------------------------------- listing ---------------------------------
def test_list_json_and_table_and_env_library(tmp_path):
    lib = tmp_path / "envlib"
    p = _npy(tmp_path, ASYM.astype(np.int32), "mine.npy")
    assert run(["multipliers", "import", str(p), "--energy-rel", "0.3", "--library", str(lib)]).exit_code == 0
    r = run(["multipliers", "list", "--json"], env={"DSE_LIBRARY": str(lib)})
    assert r.exit_code == 0, r.output
    objs = json.loads(r.stdout)
    names = [o["name"] for o in objs]
    assert names[0] == "exact_u8" and "mine" in names and "exact_s8" in names
    need = {
        "name",
        "signed",
        "energy_rel",
        "energy_method",
        "source",
        "mae",
        "mae_percent",
        "wce",
        "wce_percent",
        "mre_percent",
        "ep_percent",
        "mse",
        "mean_error",
        "std_error",
    }
    assert all(need <= set(o) for o in objs)
    r = run(["multipliers", "list", "--signed", "--json"], env={"DSE_LIBRARY": str(lib)})
    assert all(o["signed"] for o in json.loads(r.stdout))
    r = run(["multipliers", "--library", str(lib), "list"])
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "format", "MAE%", "WCE%"]
    assert any(line.startswith("mine ") and "imported" in line for line in lines)
    r = run(["multipliers", "show", "mine", "--json", "--library", str(lib)])
    assert json.loads(r.stdout)["energy_rel"] == 0.3


def test_real_subprocess_list_json(tmp_path):
    exe = shutil.which("dse")
    cmd = [exe] if exe else [sys.executable, "-c", "from dse.cli import main; main()"]
    env = {**os.environ, "DSE_LIBRARY": str(tmp_path / "lib")}
    out = subprocess.run(
        [*cmd, "multipliers", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    objs = json.loads(out.stdout)
    assert len(objs) >= 32 and {o["name"] for o in objs} >= {"exact_u8", "exact_s8"}


def test_unwritable_library_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = _npy(tmp_path, np.outer(U, U).astype(np.int32), "m.npy")
    r = run(["multipliers", "import", str(p), "--energy-rel", "0.5", "--library", str(blocker / "lib")])
    assert r.exit_code == 2 and "cannot write" in r.stderr and r.stderr.count("\n") == 1
