"""A training's local record (``<output dir>/tracking``) and ``sync``: a tiny training with nothing answering at
the tracking server's address trains, keeps its whole run in the record and says how to send it; ``sync`` sends
it to a store as if the training had been online, once, however often it is asked and wherever a send was cut
short. (The same against the team's server, killed during a training: ``test_server_outage``.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from convlstm.commands.sync import sync
from convlstm.commands.train import train
from convlstm.config import DEFAULT_REGISTERED_NAME
from convlstm.scoring_client import free_port
from convlstm.tracking import upload
from convlstm.tracking.journal import Journal
from tests.integration.workspace import EPOCH_METRICS, TINY_ARGS, all_runs, invoke, steps, tracking_environment

EPOCHS = 2


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory: pytest.TempPathFactory, tiny_nc: Path) -> Path:
    """A tiny training whose tracking server never answered: its output folder."""
    folder = tmp_path_factory.mktemp("offline") / "out"
    with pytest.MonkeyPatch.context() as mp, tracking_environment(folder.parent, mp):
        mp.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        args = ["--data", tiny_nc, "--output-dir", folder, *TINY_ARGS, "--num-epochs", str(EPOCHS)]
        assert invoke(train, args) == 0
    return folder


def _copy(offline_dir: Path, tracked: Path) -> Path:
    """The offline folder copied next to the test's (empty) tracking store, its record unsent."""
    return Path(shutil.copytree(offline_dir, tracked / "out"))


def _check_sent_once(client: MlflowClient, folder: Path) -> str:
    """One FINISHED run holding the record: every epoch once, at the times the training measured them, its model
    logged and registered once; its id."""
    (run,) = all_runs(client)
    assert run.info.status == "FINISHED"
    entries = Journal(folder).entries()
    assert run.info.start_time == entries[0]["time"]  # when the training started, not when it was sent
    for key in EPOCH_METRICS:
        assert steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key
    measured = {e["step"]: e["time"] for e in entries if e["op"] == "metrics" and "val_loss" in e["metrics"]}
    assert {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "val_loss")} == measured
    assert len(client.get_metric_history(run.info.run_id, "test_rmse_mm")) == 1
    assert run.data.params["num_epochs"] == str(EPOCHS) and run.data.tags["experiment_type"] == "baseline"
    assert {"checkpoints/last.pt", "checkpoints/best_model.pt"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    (version,) = client.search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}'")
    assert version.run_id == run.info.run_id and run.data.tags["registered_model"].endswith(f"/{version.version}")
    assert len(client.get_run(run.info.run_id).outputs.model_outputs) == 1
    return run.info.run_id


def test_offline_training_keeps_its_run_and_sync_sends_it_as_if_online(
        offline_dir: Path, tracked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = Journal(offline_dir)
    assert journal.state().runs == {} and journal.pending()[-1]["op"] == "end"  # the whole run, nothing sent
    assert (offline_dir / "last.pt").is_file() and (offline_dir / "best_model.pt").is_file()

    folder = _copy(offline_dir, tracked)
    assert invoke(sync, [folder]) == 0
    run_id = _check_sent_once(MlflowClient(), folder)
    assert f"run {run_id}" in capsys.readouterr().out

    assert invoke(sync, [folder]) == 0  # asked again: nothing more
    assert "already on the tracking server" in capsys.readouterr().out
    _check_sent_once(MlflowClient(), folder)

    # the synced run resumes as any other: by its folder, whose checkpoint knew no run id
    assert invoke(train, ["--resume", folder, "--output-dir", folder, "--num-epochs", str(EPOCHS + 1)]) == 0
    assert [r.info.run_id for r in all_runs(MlflowClient())] == [run_id]
    assert steps(MlflowClient(), run_id, "val_loss") == list(range(1, EPOCHS + 2))


@pytest.mark.parametrize("cut_after", ["start", "metrics", "model"])
def test_a_send_cut_short_after_the_server_took_an_entry_does_not_repeat_it(
        offline_dir: Path, tracked: Path, monkeypatch: pytest.MonkeyPatch, cut_after: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The process sending dies after the server took an entry but before recording it as sent: the next ``sync``
    sends that entry again, and it must not add a second run, a metric twice or a second model version."""
    folder = _copy(offline_dir, tracked)

    def cut(original):  # noqa: ANN001, ANN202 - wraps an entry's sending
        def send_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            original(*args, **kwargs)
            raise ConnectionResetError("the sending process died here")
        return send_then_die

    with monkeypatch.context() as mp:
        if cut_after == "start":
            mp.setattr(upload, "_start", cut(upload._start))
        else:
            mp.setitem(upload.APPLY, cut_after, cut(upload.APPLY[cut_after]))
        assert invoke(sync, [folder]) == 1
    assert "run python -m entrypoints.sync" in capsys.readouterr().err

    assert invoke(sync, [folder]) == 0
    _check_sent_once(MlflowClient(), folder)


def test_resuming_a_folder_whose_record_is_not_sent_is_refused(offline_dir: Path, tracked: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(offline_dir, tracked)
    assert invoke(train, ["--resume", folder, "--output-dir", folder, "--num-epochs", str(EPOCHS + 1)]) == 1
    err = capsys.readouterr().err
    assert "not on the tracking server yet" in err and f"python -m entrypoints.sync {folder}" in err
    assert all_runs(MlflowClient()) == []
