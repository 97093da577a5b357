"""Screenshots of the MLflow UI for the README, from a headless browser: the runs table with the sweep and
ensemble parent runs, and the compare view of those parents (their summary metrics side by side).

Run it on a tracking store that holds the demo's sweeps and ensembles (README, "A fair comparison"):

    pip install -e ".[docs]"   # Playwright; it drives a Chromium already installed
    python docs/ui_screenshots.py --tracking-uri sqlite:///mlflow.db --experiment convlstm-demo --out docs/img

It starts ``mlflow ui`` on a free local port against that store and stops it at the end. Chromium: Debian's
``chromium-headless-shell`` package (the default path below), or ``playwright install chromium`` and
``--chromium ''`` to use Playwright's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, sync_playwright

from convlstm.scoring_client import free_port

logger = logging.getLogger("ui_screenshots")
PARENT_TYPES = ("sweep", "ensemble")
VIEWPORT = {"width": 1600, "height": 1100}
TALL = {"width": 1600, "height": 2000}


def start_ui(tracking_uri: str, port: int) -> subprocess.Popen[bytes]:
    """``mlflow ui`` on 127.0.0.1:PORT against the store; returns once it answers (or raises with its log)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # its job runner starves 2 cores
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"mlflow-ui-{port}.log", "wb")  # noqa: SIM115 - the server's
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310 - local server
            return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(1)
    process.terminate()
    raise RuntimeError(f"mlflow ui did not answer on port {port}; see {log.name}")


def parent_runs(client: MlflowClient, experiment_id: str) -> list:
    """The experiment's finished sweep and ensemble parent runs, baseline first."""
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    parents = [run for run in runs if run.data.tags.get("run_type") in PARENT_TYPES]
    return sorted(parents, key=lambda run: (run.data.tags["run_type"], run.data.tags.get("experiment_type", "")))


def settle(page: Page, url: str) -> None:
    """Open the page, wait for its data, and close MLflow's assistant panel so the view has the width."""
    page.goto(url, wait_until="load")
    page.wait_for_timeout(6000)  # the UI keeps polling, so "network idle" never comes: give its requests time
    close = page.get_by_label("Close", exact=True)
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)


def main() -> None:
    """Take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="convlstm-demo")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--chromium", default="/usr/bin/chromium-headless-shell",
                        help="The browser binary; '' for Playwright's own.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        parser.error(f"--experiment: no experiment {args.experiment!r} in {args.tracking_uri}")
    parents = parent_runs(client, experiment.experiment_id)
    if not parents:
        parser.error(f"--experiment: {args.experiment!r} holds no finished sweep or ensemble parent run")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_ui(args.tracking_uri, port)
    base = f"http://127.0.0.1:{port}/#"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium or None, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            settle(page, f"{base}/experiments/{experiment.experiment_id}/runs")
            # the [+] beside a parent's name lists its children under it: open the two newest parents
            for expand in page.locator("button[data-component-id*='runnamecellrenderer']").all()[:2]:
                expand.click()
                page.wait_for_timeout(1500)
            page.screenshot(path=args.out / "runs_table.png")
            ids = json.dumps([run.info.run_id for run in parents])
            settle(page, f'{base}/compare-runs?runs={ids}&experiments=["{experiment.experiment_id}"]')
            page.set_viewport_size(TALL)  # run names, differing params and the summary metrics on one page
            for switch in page.get_by_role("switch").all()[:2]:  # "Show diff only", for params and for metrics
                switch.click()
            page.wait_for_timeout(1500)
            page.get_by_text("Run details", exact=True).first.scroll_into_view_if_needed()
            page.screenshot(path=args.out / "compare_parents.png", full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    logger.info("Wrote %s and %s (%d parent runs).", args.out / "runs_table.png", args.out / "compare_parents.png",
                len(parents))


if __name__ == "__main__":
    main()
