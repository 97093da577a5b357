"""PostgreSQL, the backend store: runs, metrics, the model registry and (in a database of its own) the
users and permissions of MLflow's basic-auth app.

The cluster lives in ``DIR/postgres``; as root it belongs to, and runs as, the ``postgres`` user
(PostgreSQL refuses to run as root). It listens on 127.0.0.1 only, with password (SCRAM) logins over
TCP; its Unix socket is in ``DIR/postgres/socket`` (mode 0700), where the superuser logs in without a
password to create the MLflow role and databases.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg2
from psycopg2 import sql

from deploy.stack.layout import AUTH_DATABASE, DATABASE, DB_ROLE, Layout, StackError
from deploy.stack.processes import log_tail

logger = logging.getLogger(__name__)

PG_BIN_ENV = "CONVLSTM_PG_BIN"
DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 60
SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path, minus the terminating NUL


def find_bin_dir(given: str | None = None) -> Path:
    """The folder with ``initdb`` and ``pg_ctl``: ``given``, else $CONVLSTM_PG_BIN, else PostgreSQL 15's
    Debian folder, else the newest ``/usr/lib/postgresql/*/bin``, else the one on PATH."""
    explicit = given or os.environ.get(PG_BIN_ENV)
    candidates = [explicit] if explicit else [
        str(DEFAULT_PG_BIN), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True),
        os.path.dirname(shutil.which("pg_ctl") or "")]
    for candidate in filter(None, candidates):
        folder = Path(candidate)
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    where = explicit or f"{DEFAULT_PG_BIN}, /usr/lib/postgresql/*/bin or on PATH"
    raise StackError(f"PostgreSQL server programs (initdb, pg_ctl) not found in {where}: install them "
                     f"(apt-get install postgresql-15) or pass --pg-bin / set {PG_BIN_ENV}.")


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def _as_owner(command: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root, as ourselves otherwise."""
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], layout: Layout, what: str, timeout: float = START_TIMEOUT_S + 30) -> str:
    try:
        done = subprocess.run(_as_owner(command), cwd=layout.postgres, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"PostgreSQL {what} took over {timeout:.0f} s: see {layout.pg_log}.") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise StackError(f"PostgreSQL {what} failed ({detail[-1] if detail else f'exit status {done.returncode}'}): "
                         f"see {layout.pg_log}.")
    return done.stdout


def prepare(layout: Layout, bin_dir: Path) -> None:
    """Create the cluster on first use (``initdb``), owned by the user PostgreSQL runs as."""
    socket_path = layout.pg_socket / ".s.PGSQL.65535"
    if len(str(socket_path)) > SOCKET_PATH_MAX:
        raise StackError(f"the stack directory {layout.root} is too long for PostgreSQL's socket path "
                         f"({len(str(socket_path))} > {SOCKET_PATH_MAX} characters): choose a shorter DIR.")
    for folder in (layout.postgres, layout.pg_socket):
        folder.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise StackError("runuser (util-linux) is needed to run PostgreSQL as the postgres user: install util-linux.")
        try:
            for folder in (layout.postgres, layout.pg_socket):
                shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
        except LookupError as exc:
            raise StackError("there is no postgres user to run PostgreSQL as (we run as root): install the "
                             "postgresql package, or run the stack as an ordinary user.") from exc
        if subprocess.run(_as_owner(["test", "-w", str(layout.postgres)]), check=False).returncode != 0:
            raise StackError(f"the postgres user cannot reach {layout.postgres}: make every folder above it "
                             f"searchable by others (chmod o+x), or choose a DIR under /srv or /tmp.")
    if (layout.pg_data / "PG_VERSION").is_file():
        return
    logger.info("Creating the PostgreSQL cluster in %s", layout.pg_data)
    _run([str(bin_dir / "initdb"), "-D", str(layout.pg_data), "-U", SYSTEM_USER, "-E", "UTF8", "--locale=C",
          "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"], layout, "initdb")


def start(layout: Layout, bin_dir: Path, port: int) -> psutil.Process:
    """Start the server (``pg_ctl start``, which waits until it accepts connections).

    Returns
    -------
    psutil.Process
        The postmaster.
    """
    options = f"-p {port} -k {layout.pg_socket} -c listen_addresses=127.0.0.1"
    try:
        _run([str(bin_dir / "pg_ctl"), "-D", str(layout.pg_data), "-l", str(layout.pg_log), "-o", options, "-w",
              "-t", str(START_TIMEOUT_S), "start"], layout, "start")
    except StackError:
        if postmaster_process(layout) is not None:  # a start that timed out leaves a server the caller cannot see
            stop(layout, bin_dir)
        raise
    postmaster = postmaster_process(layout)
    if postmaster is None:
        raise StackError(f"PostgreSQL reported a start but no server runs: see {layout.pg_log} "
                         f"({log_tail(layout.pg_log, 2)}).")
    return postmaster


def postmaster_process(layout: Layout) -> psutil.Process | None:
    """The running postmaster of this cluster (the first line of ``postmaster.pid``), or None."""
    try:
        pid = int((layout.pg_data / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def bootstrap(layout: Layout, port: int, password: str) -> None:
    """Create the MLflow role and its two databases where missing (the superuser, over the socket)."""
    connection = psycopg2.connect(host=str(layout.pg_socket), port=port, user=SYSTEM_USER, dbname="postgres",
                                  connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(DB_ROLE)), (password,))
            for database in (DATABASE, AUTH_DATABASE):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(DB_ROLE)))
    finally:
        connection.close()


def check_login(port: int, password: str, timeout: float = 30.0) -> None:
    """The MLflow role logs in over TCP with its password, as the MLflow server will."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=DB_ROLE, password=password, dbname=DATABASE,
                             connect_timeout=5).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                first = (str(exc).strip().splitlines() or ["no answer"])[0]
                raise StackError(f"PostgreSQL on 127.0.0.1:{port} refuses the MLflow role ({first}).") from exc
            time.sleep(0.5)


def stop(layout: Layout, bin_dir: Path) -> None:
    """``pg_ctl stop -m fast``: sessions are ended, then a clean shutdown (no recovery on the next start)."""
    _run([str(bin_dir / "pg_ctl"), "-D", str(layout.pg_data), "-m", "fast", "-w", "-t", str(START_TIMEOUT_S),
          "stop"], layout, "stop")


def uri(port: int, password: str, database: str = DATABASE) -> str:
    """The SQLAlchemy URI of a database; ``+psycopg2`` because SQLAlchemy 2.1 maps bare ``postgresql://`` to psycopg 3."""
    return f"postgresql+psycopg2://{DB_ROLE}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"
