"""Scaling out on existing engines: the pipeline, the server and monitoring through an MLflow tracking
server whose backend store is PostgreSQL and whose artifacts every client reaches through it."""
import subprocess
import time

import httpx
import pytest

from conftest import BIN, EXAMPLE, clean_environ, free_port, fresh_database, small_project_environ
from mlops_nb.config import load_settings
from mlops_nb.registry import champion_version, load_bundle


@pytest.fixture
def tracking_server(tmp_path):
    "`mlflow server` on loopback: PostgreSQL (a fresh database) as its backend store, artifacts served from a folder of its own."
    with fresh_database("mlops_tracking") as url: yield from _serve_tracking(url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False), tmp_path)


def _serve_tracking(backend:str, tmp_path):
    port, artifacts = free_port(), tmp_path/"server_artifacts"
    server = subprocess.Popen([str(BIN/"mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path/"mlflow_server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert server.poll() is None, (tmp_path/"mlflow_server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.5)
        else: pytest.fail("the MLflow server did not answer within 120 s")
        yield url, artifacts
    finally: server.terminate(); server.wait(30)


@pytest.mark.slow
def test_pipeline_and_server_through_a_tracking_server(tracking_server, tmp_path):
    url, server_artifacts = tracking_server
    env = small_project_environ(tmp_path, MLOPS_TRACKING_URI=url)
    result = subprocess.run([str(BIN/"mlops_run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "registered v1, promoted" in result.stdout
    # every artifact went to the server's store; this machine kept none
    assert list(server_artifacts.rglob("model.ubj")) and not (tmp_path/"state"/"artifacts").exists()
    settings = load_settings(environ=env)
    assert champion_version(settings) == "1"
    from mlops_nb.serve import app_client, create_app
    with app_client(create_app(settings)) as client:  # the server loads the champion through the tracking server
        answer = client.post("/predict", json={"rows": EXAMPLE["rows"]})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert load_bundle(settings, alias="champion").data_digest
    from mlops_nb.monitor import monitor_report  # monitoring reads the champion and its training rows through the tracking server too
    report = monitor_report(settings, tmp_path/"monitor")
    assert report["model_version"] == "1" and report["window_rows"] == len(EXAMPLE["rows"])


@pytest.fixture
def shared_log_url():
    "A fresh PostgreSQL database for an inference log that several servers share."
    with fresh_database("mlops_replicas") as url: yield url.render_as_string(hide_password=False)


@pytest.mark.slow
def test_replicated_servers_share_the_log_and_follow_the_champion(shared_log_url, tmp_path):
    import mlflow
    from mlops_nb.config import standalone_settings
    from mlops_nb.runs import save_settings, stage_run_dir, use_tracking
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.monitor import monitor_report
    settings = standalone_settings(inference_log=shared_log_url, serve={"poll_seconds": 0.5})
    first = train_and_register(settings, stage_run_dir(settings))
    second = train_and_register(settings, stage_run_dir(settings))  # the same data again: registered, not promoted
    assert first.decision.promoted and not second.decision.promoted
    config = save_settings(settings, tmp_path/"settings.json")
    ports = [free_port(), free_port()]
    env = clean_environ()
    replicas = [subprocess.Popen([str(BIN/"mlops_serve"), "--config", str(config), "--port", str(p)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(tmp_path/f"serve_{p}.log", "w")) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, replica in zip(urls, replicas):
            for _ in range(240):
                assert replica.poll() is None, (tmp_path/f"serve_{url.rsplit(':', 1)[1]}.log").read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200: break
                except httpx.TransportError: pass
                time.sleep(0.5)
        answers = [httpx.post(f"{url}/predict", json={"rows": EXAMPLE["rows"]*5}, timeout=10).json() for url in urls for _ in range(4)]
        assert {a["model_version"] for a in answers} == {first.version}
        time.sleep(1)  # each replica writes its log within a fraction of a second
        feedback = httpx.post(f"{urls[1]}/feedback", json={"request_id": answers[0]["request_id"], "row": 2, "label": 1}, timeout=10)
        assert feedback.status_code == 202, feedback.text  # answered by one replica, labelled through the other
        use_tracking(settings)
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "champion", second.version)
        deadline = time.time() + 30
        while time.time() < deadline and {httpx.get(f"{u}/version").json()["model_version"] for u in urls} != {second.version}: time.sleep(0.5)
        assert {httpx.get(f"{u}/version").json()["model_version"] for u in urls} == {second.version}
    finally:
        for replica in replicas: replica.terminate(); replica.wait(60)
    report = monitor_report(settings, tmp_path/"monitor")
    assert report["window_rows"] == 8*5  # the shared log holds both replicas' rows


def test_replicas_starting_together_create_the_log_once():
    "Servers that start at the same moment on a new PostgreSQL log (compose starts its replicas together) all open it: none fails creating the tables."
    import threading
    from mlops_nb.inference_log import create_tables, store_engine
    from mlops_nb.monitor import ALERTS
    with fresh_database("mlops_together") as url:
        url = url.render_as_string(hide_password=False)
        start, failures = threading.Barrier(6), []
        def open_log():
            start.wait()
            try:
                engine = store_engine(url)
                create_tables(ALERTS.metadata, engine)  # what the monitor adds
                engine.dispose()
            except Exception as e: failures.append(repr(e)[:300])
        threads = [threading.Thread(target=open_log) for _ in range(6)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not failures, failures
