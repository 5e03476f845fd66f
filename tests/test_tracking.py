"""tracking.py on a real MLflow sqlite store and a real (throwaway) HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import threading

import pytest

from latentstudy import tracking
from latentstudy.config import StudyError


@contextlib.contextmanager
def answering(code: int):
    """An HTTP server on loopback that answers every request with this status."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_a_server_that_refuses_us_is_named_with_the_way_out():
    with answering(403) as uri, pytest.raises(StudyError) as err:
        tracking.require_reachable(uri)
    assert f"tracking store '{uri}': it answers HTTP 403" in str(err.value)
    assert "--allowed-hosts" in str(err.value) and "\n" not in str(err.value)
    with answering(200) as uri:
        tracking.require_reachable(uri)


def test_a_sqlite_store_in_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        tracking.require_reachable(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    tracking.require_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_experiments_open_on_their_runs_table(tracking_uri):
    tracker = tracking.Tracker(tracking_uri)
    new = tracker.experiment("latentstudy-kind")
    assert tracker.client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = tracker.client.create_experiment("latentstudy-old")  # made before the tag existed
    links = dict(tracking.ui_links(tracking_uri, "http://127.0.0.1:5001"))
    assert links["latentstudy-old"] == f"http://127.0.0.1:5001/#/experiments/{old}?workflowType=machine_learning"
    assert tracker.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "warm-up" not in links  # only latentstudy's experiments


def test_a_missing_run_is_reported_not_raised(tracking_uri, tmp_path):
    tracker = tracking.Tracker(tracking_uri)
    assert tracker.set_status("0" * 32, "KILLED") is False
    exp = tracker.experiment("latentstudy-missing")
    run = tracker.study_run(exp, "s-missing", {})
    assert tracker.download(run, "checkpoint/trial-0.pt", tmp_path) is None
