"""The MLflow tracking server: ``mlflow server`` with PostgreSQL as its backend store, the S3 bucket as
its artifact destination (proxied: ``--serve-artifacts``), and MLflow's basic-auth app in front.

Users and permissions live in a database of their own in the same PostgreSQL cluster, so everything a
team would back up is in one place. Workspaces are on (``--enable-workspaces``, the clients' default
workspace is used) because without them every signed-in user may create experiments and registered
models (and then runs in them); with them only a role with ``USE`` on the workspace may create.

Two roles are set up: ``researchers`` (create, and edit every experiment and registered model) and
``readers`` (read them all, change nothing); the ``researcher`` and ``reader`` users hold them and
``admin`` is MLflow's administrator.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

import psutil
import requests

from deploy.stack.layout import BUCKET, WORKSPACE, Layout, StackError, write_private
from deploy.stack.processes import is_alive, log_tail, spawn

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 30.0
AUTH_CACHE_TTL_S = 60
"""How long a worker trusts a user's password once checked. Checking costs ~0.5 s of CPU (werkzeug's
scrypt hash) on every request otherwise; a changed or deleted password reaches the other workers
within this time."""
DEFAULT_PERMISSION = "READ"
"""What a user with a role in the workspace may do where no grant says otherwise: read. Anonymous
requests are refused (401) whatever this says."""

ROLES: dict[str, tuple[str, tuple[tuple[str, str, str], ...], tuple[str, ...]]] = {
    "researchers": ("create experiments and registered models, and write to every one of them",
                    (("workspace", "*", "USE"), ("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT")),
                    ("researcher",)),
    "readers": ("read every experiment, run and registered model; change nothing",
                (("experiment", "*", "READ"), ("registered_model", "*", "READ")),
                ("reader",)),
}
"""Role name → (what it may do, its grants as (resource type, pattern, permission), its users)."""


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def write_auth_config(layout: Layout, database_uri: str, admin_password: str) -> None:
    """``auth.ini`` (0600: it holds passwords); the admin password is used once, to create the admin user."""
    def escape(value: str) -> str:  # configparser reads '%' as interpolation
        return value.replace("%", "%%")

    write_private(layout.auth_config, "\n".join([
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = {escape(database_uri)}",
        "admin_username = admin",
        f"admin_password = {escape(admin_password)}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
        "",
    ]))


def server_env(backend_uri: str, layout: Layout, flask_secret: str, s3_endpoint: str, access_key: str,
               secret_key: str, job_execution: bool) -> dict[str, str]:
    """The server's environment: ours with every ``MLFLOW_*`` and ``AWS_*`` variable replaced (a user's
    own tracking URI or AWS profile must not leak into the server). The database URI goes by environment
    (``MLFLOW_BACKEND_STORE_URI``) so its password is not on the command line for ``ps`` to show."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "AWS_"))}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret,  # the same across restarts: sessions and CSRF tokens stay valid
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false",
    })
    return env


def start(layout: Layout, port: int, workers: int, env: Mapping[str, str]) -> psutil.Process:
    """Start ``mlflow server`` (its uvicorn workers join its process group)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--artifacts-destination", f"s3://{BUCKET}", "--serve-artifacts",
               "--app-name", "basic-auth", "--enable-workspaces"]
    return spawn(command, layout.log("mlflow"), env, layout.root)


def wait_healthy(layout: Layout, process: psutil.Process, port: int, timeout: float = START_TIMEOUT_S) -> None:
    """Until ``GET /health`` answers 200; fails at once when the server exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_alive(process):
            raise StackError(f"the MLflow server stopped at start: see {layout.log('mlflow')} "
                             f"({log_tail(layout.log('mlflow'), 2)}).")
        try:
            if requests.get(f"{url(port)}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"the MLflow server on port {port} did not answer /health within {timeout:.0f} s: "
                             f"see {layout.log('mlflow')}.")
        time.sleep(0.5)


class _Admin:
    """REST calls as MLflow's admin user."""

    def __init__(self, port: int, password: str) -> None:
        self.base = url(port)
        self.session = requests.Session()
        self.session.auth = ("admin", password)

    def call(self, method: str, path: str, what: str, tolerate: str | None = None, **kwargs: object) -> dict:
        """One request; an error other than the ``tolerate`` error code is a :class:`StackError`."""
        response = self.session.request(method, f"{self.base}{path}", timeout=REQUEST_TIMEOUT_S, **kwargs)
        if response.ok:
            return response.json() if response.content else {}
        try:
            code = response.json().get("error_code")
        except ValueError:
            code = None
        if tolerate is not None and code == tolerate:
            return {}
        if response.status_code == 401:
            raise StackError(f"the MLflow server refused the admin password from secrets.json while {what} (HTTP 401): "
                             "restore secrets.json, or reset the admin password in the auth database.")
        detail = (response.text.strip().splitlines() or [""])[0][:300]
        raise StackError(f"the MLflow server refused {what} (HTTP {response.status_code}: {detail}).")


def ensure_users(port: int, users: Mapping[str, str]) -> None:
    """Create the users and roles that are missing and check that every user can sign in.

    Runs at every start: a stack whose auth database was set up by an older version of this script, or
    was interrupted half-way, is completed, and nothing present is changed.
    """
    admin = _Admin(port, users["admin"])
    for user in (name for name in users if name != "admin"):
        known = admin.session.get(f"{admin.base}/api/2.0/mlflow/users/get", params={"username": user},
                                  timeout=REQUEST_TIMEOUT_S)
        if known.status_code != 200:
            admin.call("POST", "/api/2.0/mlflow/users/create", f"creating the user {user}",
                       json={"username": user, "password": users[user]})
    roles = {role["name"]: role for role in admin.call(
        "GET", "/api/3.0/mlflow/roles/list", "listing roles", params={"workspace": WORKSPACE})["roles"]}
    for name, (description, grants, members) in ROLES.items():
        role = roles.get(name) or admin.call("POST", "/api/3.0/mlflow/roles/create", f"creating the role {name}",
                                             json={"name": name, "workspace": WORKSPACE,
                                                   "description": f"May {description}."})["role"]
        have = {(grant["resource_type"], grant["resource_pattern"]) for grant in role.get("permissions", [])}
        for resource_type, pattern, permission in grants:
            if (resource_type, pattern) not in have:
                admin.call("POST", "/api/3.0/mlflow/roles/permissions/add", f"granting {name} {permission}",
                           json={"role_id": role["id"], "resource_type": resource_type,
                                 "resource_pattern": pattern, "permission": permission})
        for member in members:
            admin.call("POST", "/api/3.0/mlflow/roles/assign", f"giving {member} the role {name}",
                       tolerate="RESOURCE_ALREADY_EXISTS", json={"username": member, "role_id": role["id"]})
    for user, password in users.items():
        answer = requests.get(f"{admin.base}/api/2.0/mlflow/users/current", auth=(user, password),
                              timeout=REQUEST_TIMEOUT_S)
        if answer.status_code != 200:
            raise StackError(f"the user {user} cannot sign in with the password in secrets.json "
                             f"(HTTP {answer.status_code}): restore secrets.json or update the password as admin.")
    logger.info("Users %s and roles %s are in place.", ", ".join(users), ", ".join(ROLES))
