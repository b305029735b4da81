"""The images and the deployed topology, built and run for real with podman: deploy/Dockerfile.serve and
deploy/Dockerfile.pipeline built as a user builds them, the serve image against the session's registry, then
deploy/compose.yaml brought up by podman-compose (PostgreSQL, the MLflow tracking server, a pipeline run on a
small slice, the scheduler, two prediction servers), driven and torn down.

.ci/run sets podman up with shared/containers/setup.sh where it is missing; the tests fail, saying so, without it."""
import json
import os
import shutil
import subprocess
import time

import httpx
import pytest

from conftest import BIN, EXAMPLE, ROOT

pytestmark = pytest.mark.slow

PROJECT = f"mlopstest{os.getpid()}"
# compose.yaml as it is, with the settings of a small run: every 40th flight, 3 trials; monitoring every minute
SMALL_RUN = """
x-small: &small
  MLOPS_TRACKING_URI: http://mlflow:5000
  MLOPS_INFERENCE_LOG: postgresql://mlops:mlops@postgres:5432/mlops
  MLOPS_SERVE__ADMIN_TOKEN: test-token
  MLOPS_DATA__SAMPLE_EVERY: "40"
  MLOPS_TUNE__N_TRIALS: "3"
  MLOPS_TUNE__MAX_ROUNDS: "60"
  MLOPS_GATE__LATENCY_BUDGET_MS: "500"
  MLOPS_SCHEDULE__MONITOR: "* * * * *"
  MLOPS_SCHEDULE__RETRAIN_ON_ALERT: "false"
services:
  pipeline: {environment: *small}
  scheduler: {environment: *small}
"""
NOT_SERVING = ["optuna", "papermill", "jupyter_client", "jupyterlab", "dask", "distributed", "matplotlib", "pandas", "sklearn", "nvidia", "nbdev"]


def podman(*args, check:bool=True, timeout:float=900) -> str:
    "What `podman ARGS` printed; a failure raises with its error output."
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode: raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def build(name:str) -> None:
    "Build deploy/Dockerfile.NAME as mlops-nb-NAME from the project's root (its layers are cached between runs)."
    podman("build", "--format", "docker", "--network=host", "-f", f"deploy/Dockerfile.{name}", "-t", f"mlops-nb-{name}", ".", timeout=1800)


def wait_for(check, seconds:float, what:str, pause:float=1.0):
    "The first true value of `check()` within `seconds`; fails naming `what` otherwise."
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value: return value
        time.sleep(pause)
    pytest.fail(f"{what() if callable(what) else what} within {seconds:.0f} s")


def get(url:str) -> httpx.Response|None:
    try: return httpx.get(url, timeout=5)
    except httpx.TransportError: return None


@pytest.fixture(scope="module")
def images():
    if not shutil.which("podman"): pytest.fail("podman is not installed: .ci/run sets it up with shared/containers/setup.sh (or install podman)")
    for name in ("serve", "pipeline"): build(name)
    return {name: f"mlops-nb-{name}" for name in ("serve", "pipeline")}


def test_the_serve_image_carries_only_serving(images):
    "No training, notebook or GPU package; bytecode compiled; a user without privileges; a health check on /ready."
    found = podman("run", "--rm", images["serve"], "python", "-c",
                   f"import importlib.util, json; print(json.dumps([m for m in {NOT_SERVING!r} if importlib.util.find_spec(m)]))")
    assert json.loads(found) == []
    compiled = podman("run", "--rm", images["serve"], "python", "-c",
                      "import os, litestar, mlflow, mlops_nb.serve, polars; print([os.path.exists(m.__cached__) for m in (litestar, mlflow, mlops_nb.serve, polars)])")
    assert compiled.strip() == "[True, True, True, True]"  # their bytecode was written at build time: the image's user cannot write it
    image = json.loads(podman("image", "inspect", images["serve"]))[0]
    assert image["Config"]["User"] not in ("", "0", "root") and "/ready" in " ".join(image["Healthcheck"]["Test"])
    assert image["Config"]["Cmd"][0] == "mlops_serve"


def test_the_serve_image_answers_as_the_library_does(images, registry):
    "The container, pointed at the session's registry (mounted where it lies), gives the same answers as the app in this environment: xgboost-cpu serves the same model."
    from mlops_nb.runs import use_tracking
    from mlops_nb.serve import app_client, create_app
    settings, config, rows = registry
    mounts = []
    for folder in {settings.state.parent, config.parent}:  # where the registry and the settings file lie, mounted at the same paths
        subprocess.run(["chmod", "-R", "a+rwX", str(folder)], check=True)  # the image's user writes its inference log there
        mounts += ["-v", f"{folder}:{folder}"]
    name = f"{PROJECT}_alone"
    podman("run", "-d", "--name", name, "-p", "127.0.0.1::8000", *mounts, images["serve"],
           "mlops_serve", "--config", str(config), "--host", "0.0.0.0", "--port", "8000")
    try:
        url = "http://" + podman("port", name, "8000").split()[0]
        wait_for(lambda: (r := get(f"{url}/ready")) is not None and r.status_code == 200, 120, lambda: f"the container was not ready:\n{_output(name)[-3000:]}")
        answer = httpx.post(f"{url}/predict", json={"rows": rows[:200]}, timeout=30)
        assert answer.status_code == 200, answer.text
        use_tracking(settings)  # the registry is the session's: another module may have pointed MLflow elsewhere
        with app_client(create_app(settings)) as here: expected = here.post("/predict", json={"rows": rows[:200]}).json()
        assert answer.json()["model_version"] == expected["model_version"] and answer.json()["threshold"] == expected["threshold"]
        assert answer.json()["predictions"] == expected["predictions"]
    finally:
        podman("rm", "-f", name, check=False)


class Topology:
    "compose.yaml brought up by podman-compose as project PROJECT, with the small run's settings."
    def __init__(self, folder):
        override = folder/"small.yaml"
        override.write_text(SMALL_RUN)
        self.compose = [str(BIN/"podman-compose"), "-p", PROJECT, "-f", str(ROOT/"deploy"/"compose.yaml"), "-f", str(override)]

    def __call__(self, *args, timeout:float=900) -> subprocess.CompletedProcess:
        return subprocess.run([*self.compose, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def replicas(self) -> list[str]:
        "Each serving replica's base URL on the host."
        return ["http://" + podman("port", f"{PROJECT}_serve_{n}", "8000").split()[0].replace("0.0.0.0", "127.0.0.1") for n in (1, 2)]

    def sql(self, query:str) -> str:
        return podman("exec", f"{PROJECT}_postgres_1", "psql", "-h", "127.0.0.1", "-p", "5432", "-U", "mlops", "-d", "mlops", "-tAc", query).strip()

    def containers(self) -> list[dict]:
        return json.loads(podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "json") or "[]")


def _output(name:str) -> str:
    "A container's console output, both streams."
    result = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def topology(images, tmp_path_factory):
    "The topology up, once its pipeline run has promoted v1 and both replicas serve it."
    up = Topology(tmp_path_factory.mktemp("topology"))
    started = up("up", "-d")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        wait_for(lambda: "registered v1, promoted" in _output(f"{PROJECT}_pipeline_1"), 900, "the pipeline container did not promote v1", pause=3)
        for url in up.replicas():
            wait_for(lambda: (r := get(f"{url}/ready")) is not None and r.status_code == 200, 180, f"the replica at {url} was not ready")
        yield up
    finally:
        up("down", "-v", timeout=300)


def test_the_pipeline_container_registers_and_promotes(topology):
    console = _output(f"{PROJECT}_pipeline_1")
    assert "[5/5] 05_evaluate ok" in console and "champion is v1" in console
    assert topology.sql("select count(*) from registered_models where name = 'flights_late'") == "1"  # in the tracking server's PostgreSQL


def test_both_replicas_answer_and_share_one_log(topology):
    answers = [httpx.post(f"{url}/predict", json=EXAMPLE, timeout=30) for url in topology.replicas() for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["predictions"][0]["probability"] for a in answers}) == 1 and {a.json()["model_version"] for a in answers} == {"1"}
    ids = ", ".join(f"'{a.json()['request_id']}'" for a in answers)
    wait_for(lambda: topology.sql(f"select count(distinct request_id) from predictions where request_id in ({ids})") == "10", 60,
             "the ten answers of both replicas did not reach the shared inference log")


def test_a_new_champion_reaches_both_replicas_without_a_restart(topology):
    before = {c["Names"][0]: (c["Id"], c["StartedAt"]) for c in topology.containers() if "_serve_" in c["Names"][0]}
    second = topology("run", "--rm", "-e", "MLOPS_DATA__SAMPLE_EVERY=30", "-e", "MLOPS_GATE__MIN_GAIN=-1", "-e", "MLOPS_GATE__MAX_SLICE_DROP=1",
                      "-e", "MLOPS_GATE__MAX_WINDOW_DROP=1", "pipeline", "mlops_run")
    assert second.returncode == 0 and "registered v2, promoted" in second.stdout + second.stderr, (second.stdout[-2000:], second.stderr[-3000:])
    for url in topology.replicas():
        wait_for(lambda: (r := get(f"{url}/ready")) is not None and r.json().get("model_version") == "2", 120, f"{url} did not follow the champion to v2")
        assert httpx.post(f"{url}/predict", json=EXAMPLE, timeout=30).json()["model_version"] == "2"
    after = {c["Names"][0]: (c["Id"], c["StartedAt"]) for c in topology.containers() if "_serve_" in c["Names"][0]}
    assert after == before and len(after) == 2


def test_the_scheduler_runs_a_monitoring_job(topology):
    def monitored():
        jobs = [json.loads(line) for line in podman("exec", f"{PROJECT}_scheduler_1", "cat", "/app/state/schedule.jsonl", check=False).splitlines() if line.strip()]
        return [j for j in jobs if j["job"] == "monitor" and j["status"] == "ok"]
    job = wait_for(monitored, 240, "the scheduler ran no monitoring job that ended ok", pause=5)[0]
    assert job["report"].startswith("/app/state/monitor/")
    assert int(topology.sql("select count(*) from runs where name like 'monitor %'")) >= 1  # the monitoring run, in MLflow


def test_everything_stops_cleanly(topology):
    "Stopped, every container ends on its own (none killed after the grace period); down removes containers and volumes."
    stopped = topology("stop", timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    codes = {c["Names"][0]: c["ExitCode"] for c in topology.containers()}
    assert len(codes) == 6 and not [n for n, code in codes.items() if code not in (0, 143)], codes  # 143: ended by the SIGTERM it was sent
    down = topology("down", "-v", timeout=300)
    assert down.returncode == 0 and topology.containers() == []
    assert not [v for v in podman("volume", "ls", "--format", "{{.Name}}").split() if v.startswith(PROJECT)]
