"""The tracking server stack's files and refusals, without starting a server: secrets and credentials
only their owner may read, an auth config MLflow reads back as written, database URIs that survive any
password, and one-line errors naming the fix (busy port, unwritable folder, missing PostgreSQL, no stack)."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("psycopg2", reason="the server extra is not installed")
pytest.importorskip("boto3", reason="the server extra is not installed")

from deploy.stack import StackError, start, status, stop  # noqa: E402
from deploy.stack.layout import USERS, Layout, client_env, load_secrets, write_credentials  # noqa: E402
from deploy.stack.mlflow_server import AUTH_CACHE_TTL_S, DEFAULT_PERMISSION, write_auth_config  # noqa: E402
from deploy.stack.postgres import find_bin_dir, uri  # noqa: E402
from deploy.stack.processes import find, record  # noqa: E402
from tests.helpers import REPO  # noqa: E402


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_long_enough_and_kept(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = load_secrets(layout)
    assert mode(layout.secrets) == 0o600
    assert set(first["users"]) == set(USERS)
    assert all(len(password) >= 12 for password in first["users"].values())  # MLflow's basic auth refuses shorter
    assert len({first["postgres_password"], first["s3_secret_key"], *first["users"].values()}) == 2 + len(USERS)
    assert load_secrets(layout) == first  # a restart uses the same passwords


def test_credentials_files_are_private_and_sourceable(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    users = {"researcher": "pa ss'word$1234", "reader": "r" * 24}
    write_credentials(layout, "http://127.0.0.1:5000", users)
    assert mode(layout.credentials) == 0o700
    for user, password in users.items():
        path = layout.credentials_file(user)
        assert mode(path) == 0o600
        shown = subprocess.run(["bash", "-c", f". {shlex.quote(str(path))} && env"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        expected = client_env("http://127.0.0.1:5000", user, password)
        assert {f"{name}={value}" for name, value in expected.items()} <= set(shown)


def test_auth_config_reads_back_in_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.config import read_auth_config

    layout = Layout(tmp_path)
    database = uri(5432, "p%40ss/w:rd#100%", "mlflow_auth")
    write_auth_config(layout, database, "admin%password-1")
    assert mode(layout.auth_config) == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(layout.auth_config))
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config = read_auth_config()
    assert (config.database_uri, config.admin_username, config.admin_password) == (database, "admin", "admin%password-1")
    assert (config.default_permission, config.auth_cache_ttl_seconds) == (DEFAULT_PERMISSION, AUTH_CACHE_TTL_S)


def test_database_uri_keeps_any_password() -> None:
    from sqlalchemy.engine import make_url

    password = "p@ss/w:rd#100%?&"
    parsed = make_url(uri(6543, password))
    assert (parsed.drivername, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "postgresql+psycopg2", password, "127.0.0.1", 6543, "mlflow")


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} for postgres on 127.0.0.1 is in use: .*--postgres-port"):
            start(tmp_path / "stack", ports={"postgres": port})
    assert not (tmp_path / "stack" / "postgres").exists()


def test_unwritable_directory_and_missing_postgres_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StackError, match=r"is not writable .*choose another DIR"):
        start(tmp_path / "file" / "stack")
    with pytest.raises(StackError, match=r"not found in /nowhere: .*postgresql-15.*--pg-bin"):
        find_bin_dir("/nowhere")
    with pytest.raises(StackError, match=r"postgres, s3 must run before mlflow: start it"):
        start(tmp_path / "alone", only=["mlflow"])


def test_stop_and_status_without_a_stack(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="holds no stack"):
        stop(tmp_path)
    with pytest.raises(StackError, match="holds no stack"):
        status(tmp_path)


def test_a_server_is_found_again_after_the_wall_clock_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """NTP or a restored virtual machine steps the wall clock; on Linux psutil's start time of every process moves
    with it. The stack still knows its servers, and still tells a new program under a reused pid from them."""
    server = psutil.Process()
    entry = record(server)
    assert find(entry).pid == server.pid
    started, booted = psutil.Process.create_time, psutil.boot_time()
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: started(self) + 5.0)
    monkeypatch.setattr(psutil, "boot_time", lambda: booted + 5.0)
    assert find(entry).pid == server.pid
    assert find({**entry, "since_boot": entry["since_boot"] - 1.0}) is None  # started a second later: another one
    assert find({key: value for key, value in entry.items() if key != "since_boot"}) is None  # an old stack.json


def test_the_script_fails_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(REPO / "deploy" / "tracking-server"), "status", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: {tmp_path} holds no stack (no stack.json): start one with "
                                                 "`deploy/tracking-server start`."]
    usage = subprocess.run([str(REPO / "deploy" / "tracking-server"), "stop", str(tmp_path), "--only", "redis"],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert usage.returncode == 2
    assert "'redis' is not one of 'postgres', 's3', 'mlflow'" in usage.stderr
