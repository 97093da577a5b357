"""A team's MLflow tracking server on this machine, every file under one directory: PostgreSQL (the
backend store, and the users of MLflow's basic-auth app), an S3-compatible object store (``rclone serve
s3``, the artifacts) and ``mlflow server`` with authentication in front of both.

``deploy/tracking-server`` is its command line (``python -m deploy.tracking_server``); the tests start and stop
the same stack through :func:`start` and :func:`stop`.
"""

from deploy.stack.control import PartStatus, Stack, processes, start, status, stop
from deploy.stack.layout import BUCKET, DEFAULT_USER, PARTS, USERS, StackError

__all__ = ["BUCKET", "DEFAULT_USER", "PARTS", "USERS", "PartStatus", "Stack", "StackError", "processes", "start",
           "status", "stop"]
