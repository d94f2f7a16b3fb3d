"""Shared fixtures. `postgres_url`: a real PostgreSQL server on loopback (Debian's cluster, started here
if it is not running), with a fresh database and role for the test session, dropped afterwards."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


def _psql(sql: str) -> None:
    _run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])


def _cluster() -> tuple[str, str, str] | None:
    """(version, name, status) of the first installed cluster."""
    if shutil.which("pg_lsclusters") is None:
        return None
    out = _run(["pg_lsclusters", "--no-header"]).stdout.split("\n")
    for line in out:
        parts = line.split()
        if len(parts) >= 4:
            return parts[0], parts[1], parts[3]
    return None


@pytest.fixture(scope="session")
def postgres_url():
    cluster = _cluster()
    if cluster is None:
        versions = (
            sorted(p.name for p in Path("/etc/postgresql").glob("*"))
            if Path("/etc/postgresql").is_dir()
            else []
        )
        pytest.fail(
            f"PostgreSQL is not installed (no pg_lsclusters; /etc/postgresql: {versions}); .ci/run installs it"
        )
    version, name, status = cluster
    started = False
    if status != "online":
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"])
        started = True
    port = _run(["runuser", "-u", "postgres", "--", "psql", "-tAc", "SHOW port"]).stdout.strip() or "5432"
    tag = secrets.token_hex(4)
    user, db, password = f"dse_test_{tag}", f"dse_test_{tag}", secrets.token_hex(12)
    _psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    _psql(f"CREATE DATABASE {db} OWNER {user}")
    try:
        yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{db}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        _psql(f"DROP ROLE IF EXISTS {user}")
        if started:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop"], capture_output=True
            )


@pytest.fixture
def one_torch_thread():
    """Tiny networks gain nothing from a second thread, and lose much when the CPU is shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------ a tiny prepared digits run
# Prepared once per test session (float training + QAT on 300 images, seconds); each test module that asks
# for `tiny_digits_run` gets its own copy, so what one module's stages write cannot change another's.

TINY_SPACE = """
name = "tiny_space"
format = "unsigned"
weight_scheme = "sign-magnitude"
multipliers = ["exact_u8", "trunc6_u8", "trunc8_u8", "bam_h3_v9_u8", "drum4_u8", "mitchell_u8"]
"""

TINY_STUDY = """
name = "tiny_agn"
search_space = "{space}"
[model]
name = "digits_cnn"
[data]
name = "digits"
train_size = 300
val_size = 200
test_size = 97
[train]
epochs = 3
qat_epochs = 1
batch_size = 64
lr = 0.01
calibration_batches = 2
[agn]
lambdas = [0.5]
epochs = 1
"""


@pytest.fixture(scope="session")
def _tiny_digits_template(tmp_path_factory) -> Path:
    import torch

    from dse.prepare import prepare

    tmp = tmp_path_factory.mktemp("tiny_digits")
    (tmp / "space.toml").write_text(TINY_SPACE)
    study = tmp / "study.toml"
    study.write_text(TINY_STUDY.format(space=(tmp / "space.toml").as_posix()))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare(study, out=tmp / "run", device="cpu")
    finally:
        torch.set_num_threads(n)
    return tmp / "run"


@pytest.fixture(scope="module")
def tiny_digits_run(_tiny_digits_template: Path, tmp_path_factory):
    """A prepared tiny digits run directory of this module's own (torch on one thread meanwhile)."""
    import torch

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    shutil.copytree(_tiny_digits_template, run)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield run
    torch.set_num_threads(n)
