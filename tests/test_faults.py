"""Fault injection: a tracking store (PostgreSQL) that is unreachable for the first attempts, then
comes up; and one that never does. The run waits for the first and ends as an uninterrupted run
would; the second fails the run cleanly without leaving anything behind."""
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import BIN, free_port, fresh_database, small_project_environ
from mlops_nb.config import load_settings
from mlops_nb.registry import champion_version


class LateRelay:
    "A TCP relay to `target` whose port opens only after `delay` seconds: until then every connection is refused."
    def __init__(self, target:tuple[str, int], delay:float):
        self.target, self.server, self.port = target, None, free_port()
        self.timer = threading.Timer(delay, self._open)
        self.timer.start()

    def _open(self):
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try: client, _ = self.server.accept()
            except OSError: return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536): sink.sendall(data)
        except OSError: pass
        finally:
            for s in (source, sink):
                try: s.shutdown(socket.SHUT_RDWR)
                except OSError: pass

    def close(self):
        self.timer.cancel()
        if self.server: self.server.close()


@pytest.fixture
def tracking_db():
    "A fresh PostgreSQL database for MLflow's tracking store and registry, dropped afterwards."
    with fresh_database("mlops_faults") as url: yield url.set(drivername="postgresql+psycopg")


def run_through(relay:LateRelay, url, home:Path, run_id:str, **env):
    "`mlops_run` in `home` with its tracking store behind `relay`."
    tracking = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    environ = small_project_environ(home, MLOPS_TRACKING_URI=tracking, **env)
    result = subprocess.run([str(BIN/"mlops_run"), "--run_id", run_id], cwd=home, env=environ, capture_output=True, text=True, timeout=900)
    return result, environ


@pytest.mark.slow
def test_tracking_store_down_for_the_first_attempts(tracking_db, tmp_path):
    relay = LateRelay((tracking_db.host, tracking_db.port or 5432), delay=8)
    try: result, env = run_through(relay, tracking_db, tmp_path, "late-store", MLOPS_PIPELINE__RETRY_WAIT="1", MLOPS_PIPELINE__RETRIES="4")
    finally: relay.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run lock: transient failure (attempt 1 of 5)" in result.stderr and "Connection refused" in result.stderr
    ledger = json.loads((tmp_path/"runs"/"late-store"/"run.json").read_text())
    assert ledger["status"] == "ok"
    waited = [r for r in ledger["retries"] if r["what"] == "run lock"]
    assert waited and [r["attempt"] for r in waited] == list(range(1, len(waited) + 1))
    assert all("Connection refused" in r["error"] for r in waited)
    # nothing lost or half-written: every stage complete with its outputs, one version registered and promoted
    assert [(s["name"], s["status"]) for s in ledger["stages"]] == [(s, "ok") for s in ("01_ingest", "02_eda", "03_clean", "04_tune", "05_evaluate")]
    assert all(s["outputs"] for s in ledger["stages"])
    assert not list((tmp_path/"runs"/"late-store").glob("*.partial"))
    assert ledger["registered_version"] == "1" and ledger["promoted"]
    settings = load_settings(environ={**env, "MLOPS_TRACKING_URI": tracking_db.render_as_string(hide_password=False)})
    assert champion_version(settings) == "1"


def test_tracking_store_that_never_answers_fails_the_run_cleanly(tracking_db, tmp_path):
    relay = LateRelay((tracking_db.host, tracking_db.port or 5432), delay=3600)
    try: result, _ = run_through(relay, tracking_db, tmp_path, "no-store", MLOPS_PIPELINE__RETRY_WAIT="0.2", MLOPS_PIPELINE__RETRIES="1")
    finally: relay.close()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "run failed: run lock still failing after 2 attempts" in result.stderr and "Connection refused" in result.stderr
    assert not (tmp_path/"runs").exists() or not list((tmp_path/"runs").iterdir())  # no stage started, nothing written
