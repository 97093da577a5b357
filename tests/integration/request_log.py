"""``python -m tests.integration.request_log LOG MODULE ARGS...``: run ``python -m MODULE ARGS`` recording every
HTTP request it makes (each request ``requests`` sends, MLflow's included) as one JSON line in LOG, so that a
test can count what one process asked of the tracking server, by kind and by epoch.

Each line: ``time`` (epoch seconds, when the answer came), ``method``, ``host`` and ``path`` (the URL's, with
no query), ``status`` and, for a batch of metrics, its ``metrics`` (the keys, sorted). A request that gets no
answer is not recorded; MLflow raises, and the process fails.
"""

from __future__ import annotations

import json
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests


def record_requests(log: Path) -> None:
    """Wrap ``requests.Session.request`` (all of ``requests`` goes through it) to append each request to ``log``."""
    send = requests.Session.request
    lock = threading.Lock()  # MLflow's system metrics thread sends too

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = send(self, method, url, *args, **kwargs)
        body = kwargs.get("json")
        parts = urlsplit(url)
        entry = {"time": time.time(), "method": method.upper(), "host": parts.netloc, "path": parts.path,
                 "status": response.status_code,
                 "metrics": sorted({metric["key"] for metric in body.get("metrics", [])})
                 if isinstance(body, dict) else []}
        with lock, log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        return response

    requests.Session.request = request  # type: ignore[method-assign]


def read_requests(log: Path) -> list[dict[str, Any]]:
    """The requests ``log`` recorded, in the order they were answered."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


if __name__ == "__main__":
    record_requests(Path(sys.argv[1]))
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
