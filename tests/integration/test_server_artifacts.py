"""A 500 MiB artifact through the team's tracking server, as the researcher with nothing but the three
``MLFLOW_TRACKING_*`` variables: it goes up by MLflow's multipart upload for proxied artifacts (the server opens
the upload and signs one URL a part, the client puts the parts into the object store, the server completes the
upload) and comes back intact both through the server and by a presigned URL (MLflow's default).

MLflow uploads a file in parts from ``MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE`` (500 MiB) on, in parts of
``MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE`` (10 MiB), when the server's ``/server-info`` says its artifact store can
(an S3 destination can) or ``MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true``; none of them is set here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from mlflow.entities.multipart_upload import MultipartUploadCredential, MultipartUploadPart
from mlflow.environment_variables import (
    MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD,
    MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD,
    MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE,
    MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE,
)
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

from tests.integration.server_stack import AccessLog, as_user

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

SIZE = 500 * 2**20
BLOCK = 2**20
ARTIFACT = "big/weights.bin"
MULTIPART_SETTINGS = (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD, MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD,
                      MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE, MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE)


def sha256(path: Path) -> str:
    """The file's digest, read a block at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A file of SIZE random bytes and its digest, written a block at a time; removed afterwards (pytest keeps
    the temporary folders of the last runs)."""
    path = tmp_path / Path(ARTIFACT).name
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(SIZE // BLOCK):
            block = os.urandom(BLOCK)
            digest.update(block)
            file.write(block)
    yield path, digest.hexdigest()
    path.unlink()


def took(what: str, began: float) -> None:
    """Log the time since ``began`` and the throughput (the README's figures)."""
    seconds = time.monotonic() - began
    logger.info("%d MiB %s in %.1f s (%.0f MiB/s)", SIZE // 2**20, what, seconds, SIZE / 2**20 / seconds)


def download(stack: object, run_id: str, destination: Path) -> Path:
    """The artifact, downloaded as the researcher."""
    with as_user(stack, "researcher"):
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT,
                                                        dst_path=str(destination)))


def test_500_mib_go_up_in_parts_and_come_back_intact(server_stack, big_file: tuple[Path, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source, digest = big_file
    for setting in MULTIPART_SETTINGS:  # MLflow's defaults, as a researcher has them
        monkeypatch.delenv(setting.name, raising=False)
    assert SIZE >= MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE.get()
    parts: list[str] = []  # where each part went
    upload_part = HttpArtifactRepository._upload_part

    def counted(credential: MultipartUploadCredential, local_file: str, size: int,
                start_byte: int) -> MultipartUploadPart:
        parts.append(urlsplit(credential.url).netloc)
        return upload_part(credential, local_file, size, start_byte)

    monkeypatch.setattr(HttpArtifactRepository, "_upload_part", staticmethod(counted))
    log = AccessLog(server_stack)
    with as_user(server_stack, "researcher") as client:
        run = client.create_run(client.create_experiment(f"artifacts-{uuid.uuid4().hex[:8]}"))
        began = time.monotonic()
        client.log_artifact(run.info.run_id, str(source), str(Path(ARTIFACT).parent))
        took(f"up in {len(parts)} parts", began)
        client.set_terminated(run.info.run_id)
    uploads = [(method, path) for method, path, _ in log.requests() if "/mlflow-artifacts/" in path]

    # 50 parts of 10 MiB, each straight into the object store; the server only opened and completed the upload
    object_store = f"127.0.0.1:{server_stack.ports['s3']}"
    assert parts == [object_store] * math.ceil(SIZE / MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE.get())
    artifact_dir = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").lstrip("/")
    opened = f"/api/2.0/mlflow-artifacts/mpu/%s/{artifact_dir}/{Path(ARTIFACT).parent}"
    assert uploads == [("POST", opened % "create"), ("POST", opened % "complete")]
    assert (server_stack.bucket_dir / artifact_dir / ARTIFACT).stat().st_size == SIZE

    # back through the server (the client asks it to stream the file), then as MLflow does by default: the server
    # signs a URL and the client reads the object store
    served = ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{artifact_dir}/{ARTIFACT}", 200)
    signed = ("GET", f"/api/2.0/mlflow-artifacts/presigned/{artifact_dir}/{ARTIFACT}", 200)
    for proxied, folder in ((True, "proxied"), (False, "presigned")):
        if proxied:
            monkeypatch.setenv(MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD.name, "false")
        else:
            monkeypatch.delenv(MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD.name)
        log, began = AccessLog(server_stack), time.monotonic()
        path = download(server_stack, run.info.run_id, tmp_path / folder)
        took(f"down, {folder}", began)
        answered = log.requests()
        assert (served in answered, signed in answered) == (proxied, not proxied), folder
        assert (path.stat().st_size, sha256(path)) == (SIZE, digest), folder
        path.unlink()
