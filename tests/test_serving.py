"""The prediction server as its own process, over real HTTP: its OpenAPI document against schemathesis,
50 clients while the champion alias moves, SIGTERM under load, and the inference log across a restart."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import pytest

from conftest import BIN, ServerProcess, free_port, metric, postgres_url
from mlops_nb.inference_log import read_inference_log
from mlops_nb.runs import use_tracking

LOAD_SECONDS = float(os.environ.get("MLOPS_TEST_LOAD_SECONDS", "20"))


def _wait_for_in_flight(url:str, received:int) -> int:
    "Wait until the server has taken all `received` predictions (answered or in flight); how many are in flight."
    deadline = time.time() + 60
    while time.time() < deadline:
        text = httpx.get(f"{url}/metrics").text
        in_flight, answered = metric(text, "mlops_predictions_in_flight"), metric(text, 'mlops_requests_total{endpoint="predict"')
        if in_flight + answered >= received: return int(in_flight)
        time.sleep(0.02)
    pytest.fail(f"the server did not receive {received} predictions within 60 s")


def test_schemathesis_finds_no_server_error_and_no_broken_response(registry, tmp_path):
    settings, path, _ = registry
    server = ServerProcess(path, MLOPS_SERVE__ADMIN_TOKEN="secret")
    try:
        result = subprocess.run([str(BIN/"st"), "run", f"{server.url}/schema/openapi.json",
                                 "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                                 "--max-examples", "60", "--seed", "1", "--no-color", "-H", "Authorization: Bearer secret"],
                                capture_output=True, text=True, timeout=900, cwd=tmp_path)
    finally: server.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "❌" not in result.stdout


@pytest.mark.slow
def test_fifty_clients_while_the_champion_moves_ten_times(registry):
    "No failed request, and every answer names a version that was champion during the test."
    settings, path, rows = registry
    server = ServerProcess(path, MLOPS_SERVE__POLL_SECONDS="0.5")
    use_tracking(settings)  # the registry is the session's: another module may have pointed MLflow elsewhere
    client = mlflow.MlflowClient()
    champions, answers, failures, stop = {"1"}, [], [], threading.Event()

    def load():
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = http.post("/predict", json={"rows": rows[i % 100:i % 100 + 1 + i % 3]})
                    if r.status_code != 200: failures.append(f"{r.status_code}: {r.text[:200]}")
                    else: answers.append((r.headers["x-model-version"], r.json()["model_version"]))
                except httpx.HTTPError as e: failures.append(repr(e))
    try:
        with ThreadPoolExecutor(50) as pool:
            for _ in range(50): pool.submit(load)
            for move in range(10):
                time.sleep(LOAD_SECONDS/10)
                target = "2" if move % 2 == 0 else "1"
                client.set_registered_model_alias(settings.model_name, "champion", target)
                champions.add(target)
            time.sleep(1)
            stop.set()
    finally:
        client.set_registered_model_alias(settings.model_name, "champion", "1")
        server.stop()
    assert not failures, failures[:10]
    assert len(answers) > 50*10, len(answers)
    assert all(header == body for header, body in answers)  # one version answered each request
    served = {v for v, _ in answers}
    assert served <= champions and served == {"1", "2"}, served


@pytest.mark.slow
def test_sigterm_under_load_loses_no_request_and_the_log_survives_a_restart(registry, tmp_path):
    settings, path, rows = registry
    log_url = f"sqlite:///{tmp_path/'inference.db'}"
    env = {"MLOPS_INFERENCE_LOG": log_url, "MLOPS_SERVE__THREADS": "1", "MLOPS_SERVE__TIMEOUT_SECONDS": "60"}
    server = ServerProcess(path, **env)
    answered, connected = [], threading.Barrier(21)

    def big_request():
        with httpx.Client(base_url=server.url, timeout=120) as http:
            http.get("/health")  # the connection is open and accepted before the load starts
            connected.wait()
            r = http.post("/predict?explain=true&features=true", json={"rows": rows})
            answered.append((time.time(), r.status_code, r.json().get("request_id")))
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(big_request) for _ in range(20)]
        connected.wait()
        in_flight = _wait_for_in_flight(server.url, received=20)
        sigterm_at = time.time()
        server.proc.send_signal(signal.SIGTERM)
        for f in futures: f.result()
    assert server.proc.wait(timeout=120) in (0, -signal.SIGTERM), "".join(server.output)  # uvicorn re-raises the signal it handled
    assert "Application shutdown complete" in "".join(server.output)
    assert [status for _, status, _ in answered] == [200]*20
    assert in_flight > 0 and sum(t > sigterm_at for t, _, _ in answered) >= in_flight
    first_ids = {rid for _, _, rid in answered}

    restarted = ServerProcess(path, **env)
    try:
        more = [httpx.post(f"{restarted.url}/predict", json={"rows": rows[:5]}, timeout=30).json()["request_id"] for _ in range(10)]
    finally: assert restarted.stop() in (0, -signal.SIGTERM)
    logged = read_inference_log(log_url, last=100_000)
    counts = dict(logged.group_by("request_id").len().iter_rows())
    assert {rid: counts.get(rid) for rid in first_ids} == {rid: len(rows) for rid in first_ids}, "".join(server.output)
    assert {rid: counts.get(rid) for rid in more} == {rid: 5 for rid in more}


def test_feedback_is_stored_beside_the_prediction(registry, tmp_path):
    settings, path, rows = registry
    log_url = f"sqlite:///{tmp_path/'inference.db'}"
    server = ServerProcess(path, MLOPS_INFERENCE_LOG=log_url, MLOPS_SERVE__API_KEYS='["k1"]')
    try:
        assert httpx.post(f"{server.url}/predict", json={"rows": rows[:2]}).status_code == 401
        answer = httpx.post(f"{server.url}/predict", json={"rows": rows[:2]}, headers={"X-API-Key": "k1"}).json()
        r = httpx.post(f"{server.url}/feedback", json={"request_id": answer["request_id"], "row": 1, "label": 1}, headers={"X-API-Key": "k1"})
        assert r.status_code == 202, r.text
        metrics = httpx.get(f"{server.url}/metrics").text
    finally: server.stop()
    from mlops_nb.inference_log import read_feedback
    assert read_feedback(log_url).select("request_id", "row", "true_label").rows() == [(answer["request_id"], 1, 1)]
    assert 'mlops_errors_total{kind="unauthorized"} 1.0' in metrics


def test_the_app_follows_the_alias_and_an_admin_reload_refuses_a_tampered_version(registry):
    "In process: the poll swaps v2 in when the alias moves; /admin/reload needs the token, and a version whose hash no longer matches is refused while the served one keeps answering."
    import msgspec
    from mlops_nb.serve import app_client, create_app
    settings, _, rows = registry
    admin = msgspec.structs.replace(settings, serve=msgspec.structs.replace(settings.serve, admin_token="secret", poll_seconds=0.2))
    use_tracking(settings)  # the registry is the session's: another module may have pointed MLflow elsewhere
    client, name = mlflow.MlflowClient(), settings.model_name
    recorded = client.get_model_version(name, "1").tags["files_sha256"]
    try:
        with app_client(create_app(admin)) as app:
            assert app.get("/version").json()["model_version"] == "1"
            assert app.post("/admin/reload").status_code == 401
            client.set_registered_model_alias(name, "champion", "2")
            deadline = time.time() + 10
            while app.get("/version").json()["model_version"] != "2" and time.time() < deadline: time.sleep(0.1)
            assert app.get("/version").json()["model_version"] == "2"
            client.set_model_version_tag(name, "1", "files_sha256", json.dumps({**json.loads(recorded), "model.ubj": "0"*64}))
            client.set_registered_model_alias(name, "champion", "1")
            outcome = app.post("/admin/reload", headers={"Authorization": "Bearer secret"}).json()
            assert "integrity" in outcome["error"] and "model.ubj" in outcome["error"] and outcome["model_version"] == "2", outcome
            answer = app.post("/predict", json={"rows": rows[:1]})
            assert answer.status_code == 200 and answer.headers["x-model-version"] == "2"
            assert metric(app.get("/metrics").text, "mlops_model_reload_failures_total") >= 1  # the poll may have tried it too
    finally:
        client.set_model_version_tag(name, "1", "files_sha256", recorded)
        client.set_registered_model_alias(name, "champion", "1")


def test_the_server_listens_at_once_and_says_why_no_model_is_ready(registry):
    "A registry that never answers: /health at once, /ready 503 while loading, an admin reload back within the request timeout, a prompt stop; one that refuses: /ready names it."
    _, path, rows = registry
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections and never answers
    auth = {"Authorization": "Bearer secret"}
    started = time.monotonic()
    server = ServerProcess(path, ready=False, MLOPS_TRACKING_URI=f"http://127.0.0.1:{silent.getsockname()[1]}",
                     MLOPS_SERVE__ADMIN_TOKEN="secret", MLOPS_SERVE__TIMEOUT_SECONDS="2")
    try:
        listening = time.monotonic() - started
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503 and ready.json()["reason"].startswith("loading") and ready.json()["loading_for_seconds"] is not None, ready.text
        asked = time.monotonic()
        reload = httpx.post(f"{server.url}/admin/reload", headers=auth, timeout=60)
        assert reload.status_code == 202 and reload.json()["pending"] and time.monotonic() - asked < 2 + 2, reload.text
        refused = httpx.post(f"{server.url}/predict", json={"rows": rows[:1]})
        assert refused.status_code == 503 and "loading" in refused.json()["detail"]
        stopping = time.monotonic()
        assert server.stop() in (0, -signal.SIGTERM) and time.monotonic() - stopping < 15  # a stop does not wait for the registry
        assert "Application shutdown complete" in "".join(server.output), "".join(server.output)[-3000:]
    finally: server.stop(); silent.close()
    closed = free_port()  # nothing listens there
    server = ServerProcess(path, ready=False, MLOPS_TRACKING_URI=f"http://127.0.0.1:{closed}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    try:
        deadline = time.time() + 60
        while (ready := httpx.get(f"{server.url}/ready").json())["attempts"] == 0 and time.time() < deadline: time.sleep(0.2)
        assert ready["reason"].startswith("registry unreachable") and str(closed) in ready["reason"], ready
    finally: server.stop()
    assert listening < 30, f"the server took {listening:.0f} s to listen"


def test_hostile_bytes_get_a_4xx_that_names_the_problem_and_the_unexpected_a_logged_500(registry):
    "Bodies that are not UTF-8, numbers beyond 64 bits, NaN beside deep nesting, a value out of range before the JSON breaks off, non-ASCII credentials, text labels, huge ids."
    import json as _json
    import logging
    import msgspec
    from mlops_nb.serve import app_client, create_app
    settings, _, rows = registry
    keyed = msgspec.structs.replace(settings, serve=msgspec.structs.replace(settings.serve, api_keys=["k1"], admin_token="secret"))
    key, row = {"X-API-Key": "k1"}, rows[0]
    cases = [  # path, body, headers, status, words the answer must hold
        ("/predict", b'{"rows": [{"carrier": "\xff\xfe"}]}', key, 400, "not UTF-8"),
        ("/predict", _json.dumps({"rows": [{**row, "year": 2**70}]}).encode(), key, 400, "row 0, field 'year'"),
        ("/predict", _json.dumps({"columns": {**{c: [v] for c, v in row.items()}, "distance": [-2**64]}}).encode(), key, 400, "field 'distance'"),
        ("/predict", b'{"rows": [{"distance": NaN}], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", key, 400, "malformed JSON"),
        ("/predict", _json.dumps({"rows": [row]}).encode(), {"X-API-Key": "k\u00e9".encode()}, 401, "API key"),
        ("/predict", b'{"rows":[{"engines":99', key, 400, "malformed JSON"),  # out of range, then cut short: found by tests/test_fuzz.py
        ("/predict", b'{"rows":[{"engines":9223372036854775808', key, 400, "malformed JSON"),
        ("/predict", b'{"columns":{"engines":[-1]', key, 400, "malformed JSON"),
        ("/feedback", b'{"request_id": "\xff", "label": 1}', key, 400, "not UTF-8"),
        ("/feedback", b'{"request_id": "abc", "label": "1"}', key, 400, "$.label"),
        ("/feedback", b'{"request_id": "abc", "label": 2}', key, 400, "$.label"),
        ("/feedback", b'{"nope"', {}, 401, "API key"),  # the key before the body
        ("/feedback", b'{"request_id": "abc", "label": 1}', {"X-API-Key": "\u00e9".encode()}, 401, "API key"),
        ("/feedback", _json.dumps({"request_id": "x"*10_000, "label": True}).encode(), key, 404, "(10,000 characters)"),
        ("/admin/reload", b"", {"Authorization": "Bearer \u00e9".encode()}, 401, "admin_token"),
    ]
    with app_client(create_app(keyed)) as app:
        for path, body, headers, status, words in cases:
            answer = app.post(path, content=body, headers={"content-type": "application/json", **headers})
            assert (answer.status_code, words in answer.json()["detail"]) == (status, True), (path, body[:60], answer.text[:300])
            assert len(answer.text) < 1000, answer.text[:200]
        predicted = app.post("/predict", json={"rows": rows[:1]}, headers=key).json()
        accepted = app.post("/feedback", json={"request_id": predicted["request_id"], "label": True}, headers=key)
        assert accepted.status_code == 202 and accepted.json()["label"] == 1
        server = app.app.state["server"]
        def broken(request_id): raise RuntimeError("the store said something unexpected")
        server.inference_log.rows_of = broken
        logged, handler = [], logging.Handler()  # the app's logging set-up replaces the root's handlers, so pytest's too
        handler.emit = logged.append
        logging.getLogger("mlops_nb.serve").addHandler(handler)
        failed = app.post("/feedback", json={"request_id": predicted["request_id"], "label": 1}, headers=key)
        assert failed.status_code == 500 and "unexpected" not in failed.text, failed.text
        reference = failed.json()["detail"].split()[2].rstrip(":")
        logging.getLogger("mlops_nb.serve").removeHandler(handler)
        assert any(reference in r.getMessage() and r.exc_info for r in logged), "the 500 is logged with its traceback"
        assert metric(app.get("/metrics").text, 'mlops_errors_total{kind="internal"}') == 1


def test_overload_is_shed_with_503_and_slow_predictions_get_504(registry):
    settings, path, rows = registry
    server = ServerProcess(path, MLOPS_SERVE__MAX_CONCURRENCY="2", MLOPS_SERVE__TIMEOUT_SECONDS="0.05", MLOPS_SERVE__THREADS="1")
    try:
        def big_request(_):
            r = httpx.post(f"{server.url}/predict?explain=true", json={"rows": rows}, timeout=60)
            return r.status_code, r.headers.get("retry-after"), r.elapsed.total_seconds()
        with ThreadPoolExecutor(12) as pool: answers = list(pool.map(big_request, range(12)))
        for _ in range(50):  # the batch running when the load stopped finishes, then the server answers again
            small = httpx.post(f"{server.url}/predict", json={"rows": rows[:1]}, timeout=10)
            if small.status_code == 200: break
            time.sleep(0.1)
        metrics = httpx.get(f"{server.url}/metrics").text
    finally: server.stop()
    statuses = {status for status, _, _ in answers}
    assert statuses <= {503, 504} and 503 in statuses and 504 in statuses, answers
    assert all(retry == "1" for status, retry, _ in answers if status == 503)
    assert small.status_code == 200  # the server recovers once the load is gone
    assert 'mlops_errors_total{kind="overload"}' in metrics and 'mlops_errors_total{kind="timeout"}' in metrics


def test_inference_log_in_postgresql_when_configured():
    url = postgres_url()
    import numpy as np
    import sqlalchemy as sa
    from mlops_nb.inference_log import InferenceLog, labelled_predictions, store_engine
    engine = store_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("delete from feedback")); c.execute(sa.text("delete from predictions"))
    log = InferenceLog(url)
    log.append("pg1", "3", {"carrier": ["AA", "B6"], "distance": [100.0, None]}, np.array([0.2, 0.9]), np.array([0, 1]))
    log.add_feedback("pg1", 1, 1)
    assert log.flush() and log.rows_of("pg1") == 2
    log.close()
    labelled = labelled_predictions(url)
    assert labelled.select("request_id", "row", "carrier", "probability", "true_label").rows() == [("pg1", 1, "B6", 0.9, 1)]


def _shadow_rows(settings, request_ids:set[str]):
    from mlops_nb.inference_log import read_shadow
    shadow = read_shadow(settings.inference_log_url)
    return shadow.filter(shadow["request_id"].is_in(list(request_ids)))


def _wait_for_shadow(version_of, version:str|None, seconds:float=30):
    deadline = time.time() + seconds
    while version_of() != version and time.time() < deadline: time.sleep(0.1)
    assert version_of() == version, f"the shadow version is {version_of()}, not {version}"


def test_the_challenger_scores_in_shadow_and_a_failing_one_touches_no_answer(registry):
    """In process, with v2 as the challenger: it scores each request after its answer, logged beside v1's; a shadow whose predictions
    fail, and a challenger whose files were tampered with, are counted, and every answer stays v1's, unchanged."""
    import msgspec
    import numpy as np
    import polars as pl
    from mlops_nb.registry import load_bundle
    from mlops_nb.serve import app_client, create_app
    settings, _, rows = registry
    fast = msgspec.structs.replace(settings, serve=msgspec.structs.replace(settings.serve, poll_seconds=0.2))
    use_tracking(settings)  # the registry is the session's: another module may have pointed MLflow elsewhere
    client, name = mlflow.MlflowClient(), settings.model_name
    client.set_registered_model_alias(name, "challenger", "2")
    expected = {v: load_bundle(settings, version=v).predict_proba(pl.DataFrame(rows[:5])) for v in ("1", "2")}
    recorded = client.get_model_version(name, "2").tags["files_sha256"]
    try:
        with app_client(create_app(fast)) as app:
            _wait_for_shadow(lambda: app.get("/version").json()["shadow_version"], "2")
            answers = [app.post("/predict", json={"rows": rows[:5]}) for _ in range(3)]
            assert {a.status_code for a in answers} == {200} and {a.headers["x-model-version"] for a in answers} == {"1"}
            for a in answers: np.testing.assert_allclose([p["probability"] for p in a.json()["predictions"]], expected["1"], rtol=1e-6)
            ids = {a.json()["request_id"] for a in answers}
            deadline = time.time() + 20
            while _shadow_rows(settings, ids).height < 15 and time.time() < deadline: time.sleep(0.1)
            shadow = _shadow_rows(settings, ids)
            assert shadow.height == 15 and set(shadow["shadow_version"]) == {"2"}
            np.testing.assert_allclose(shadow.sort("request_id", "row")["shadow_probability"], np.tile(expected["2"], 3), rtol=1e-6)
            server = app.app.state.server
            def broken(*args, **kwargs): raise RuntimeError("the shadow model broke")
            server.shadow.served.predict = broken
            after = [app.post("/predict", json={"rows": rows[:5]}) for _ in range(3)]
            assert [a.json()["predictions"] for a in after] == [a.json()["predictions"] for a in answers]
            deadline = time.time() + 20
            while metric(app.get("/metrics").text, 'mlops_shadow_errors_total{step="predict"}') < 3 and time.time() < deadline: time.sleep(0.1)
            assert metric(app.get("/metrics").text, 'mlops_shadow_errors_total{step="predict"}') == 3
        client.set_model_version_tag(name, "2", "files_sha256", json.dumps({**json.loads(recorded), "model.ubj": "0"*64}))
        with app_client(create_app(fast)) as app:  # a server starting beside a challenger that fails its integrity check
            deadline = time.time() + 20
            while metric(app.get("/metrics").text, 'mlops_shadow_errors_total{step="load"}') < 1 and time.time() < deadline: time.sleep(0.1)
            assert metric(app.get("/metrics").text, 'mlops_shadow_errors_total{step="load"}') >= 1
            assert app.get("/ready").status_code == 200 and app.get("/version").json()["shadow_version"] is None
            answer = app.post("/predict", json={"rows": rows[:5]})
            assert answer.status_code == 200 and answer.json()["predictions"] == answers[0].json()["predictions"]
    finally:
        client.set_model_version_tag(name, "2", "files_sha256", recorded)
        client.set_registered_model_alias(name, "challenger", "2")


@pytest.mark.slow
def test_shadow_scoring_under_load_changes_no_answer(registry):
    "Eight clients for LOAD_SECONDS against the server process with v2 in shadow: every answer is v1's own; every request is scored in shadow or counted as skipped."
    import numpy as np
    import polars as pl
    from mlops_nb.registry import load_bundle
    settings, path, rows = registry
    use_tracking(settings)
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "challenger", "2")
    champion = load_bundle(settings, version="1")
    expected = champion.predict_proba(pl.DataFrame(rows[:100]))
    server = ServerProcess(path, MLOPS_SERVE__POLL_SECONDS="0.5")
    answered, wrong, failures, stop = [], [], [], threading.Event()
    def load():
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                start = i % 97
                try: r = http.post("/predict", json={"rows": rows[start:start + 1 + i % 3]})
                except httpx.HTTPError as e:
                    failures.append(repr(e)); continue
                if r.status_code != 200: failures.append(f"{r.status_code}: {r.text[:200]}"); continue
                got = [p["probability"] for p in r.json()["predictions"]]
                if r.json()["model_version"] != "1" or not np.allclose(got, expected[start:start + len(got)], rtol=1e-6): wrong.append(r.text[:300])
                answered.append((r.json()["request_id"], len(got)))
    try:
        _wait_for_shadow(lambda: httpx.get(f"{server.url}/version").json()["shadow_version"], "2")
        with ThreadPoolExecutor(8) as pool:
            for _ in range(8): pool.submit(load)
            time.sleep(LOAD_SECONDS)
            stop.set()
        time.sleep(2)  # the shadow's queue drains
        text = httpx.get(f"{server.url}/metrics").text
    finally: server.stop()
    assert not failures and not wrong, (failures[:5], wrong[:5])
    shadowed = _shadow_rows(settings, {i for i, _ in answered}).group_by("request_id").len()
    skipped = metric(text, "mlops_shadow_dropped_total")
    assert shadowed.height + skipped == len(answered), (shadowed.height, skipped, len(answered))
    assert metric(text, "mlops_shadow_errors_total") == 0 and metric(text, "mlops_shadow_rows_total") == shadowed["len"].sum()
    print(f"\n{len(answered)} answers in {LOAD_SECONDS:.0f} s, {shadowed.height} scored in shadow, {skipped:.0f} skipped")
