"""A C model runs fenced in: a forked child dies with the import (at the time limit too), endless output
is stopped at a cap instead of being buffered, and the address space is limited."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dse.multipliers.c_models import DRIVER_OUTPUT_BYTES
from dse.multipliers.importers import import_multiplier
from dse.util import UserError

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

FORKING = """
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
static int forked = 0;
uint16_t mul8u_fork(uint8_t a, uint8_t b) {
  if (!forked) {
    forked = 1;
    pid_t pid = fork();
    if (pid == 0) {  /* the child: record its pid, then live on */
      FILE *f = fopen("PIDFILE", "w"); fprintf(f, "%d", (int)getpid()); fclose(f);
      for (;;) sleep(1);
    }
    if (pid > 0) { for (int i = 0; i < 500; i++) { if (access("PIDFILE", F_OK) == 0) break; usleep(10000); } }
  }
  LOOP
  return (uint16_t)(a * b);
}
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its reaper is dead too
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _child_pid(pidfile: Path) -> int | None:
    return int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text() else None


def _gone(pid: int) -> bool:
    for _ in range(100):  # the kill is immediate; the kernel may take a moment to reap
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("loop", [False, True])
def test_a_forked_child_does_not_outlive_the_import(tmp_path, loop):
    pidfile = tmp_path / "child.pid"
    src = tmp_path / "mul8u_fork.c"
    body = FORKING.replace("PIDFILE", str(pidfile)).replace("LOOP", "for (;;) {}" if loop else "")
    src.write_text(body)
    if loop:  # the driver loops: the time limit kills the whole group
        with pytest.raises(UserError, match="did not finish all 65,536 products within 1 s"):
            import_multiplier(src, energy_rel=0.5, timeout_s=1.0)
    else:
        m = import_multiplier(src, energy_rel=0.5)
        assert m.is_exact
    pid = _child_pid(pidfile)
    if pid is None:  # the process limit refused the fork (not root): nothing to outlive
        assert os.geteuid() != 0
        return
    assert _gone(pid), f"the C model's child {pid} outlived the import"


def test_endless_output_is_stopped_at_the_cap(tmp_path):
    src = tmp_path / "mul8u_chatty.c"
    src.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        "uint16_t mul8u_chatty(uint8_t a, uint8_t b) {\n"
        '  for (int i = 0; i < 100; i++) fputs("0123456789012345678901234567890123456789\\n", stdout);\n'
        "  return (uint16_t)(a * b);\n}\n"
    )  # 65,536 calls x 4 KB = 268 MB of output if nothing stopped it
    with pytest.raises(UserError, match=rf"wrote more than {DRIVER_OUTPUT_BYTES >> 20} MiB"):
        import_multiplier(src, energy_rel=0.5)


def test_the_address_space_is_limited(tmp_path):
    src = tmp_path / "mul8u_hog.c"
    src.write_text(
        "#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n"
        "uint16_t mul8u_hog(uint8_t a, uint8_t b) {\n"
        "  static char *p = 0;\n"
        "  if (!p) { p = malloc((size_t)4 << 30); if (!p) return 1; memset(p, 1, (size_t)4 << 30); }\n"
        "  return (uint16_t)(a * b);\n}\n"
    )  # 4 GiB: malloc fails under the limit, so the table is off by one at 0x0 -> a valid, inexact table
    m = import_multiplier(src, energy_rel=0.5)
    assert m.lut[0, 0] == 1 and not m.is_exact
