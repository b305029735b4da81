"""Shared by the tests: one small pipeline run built once per session, the environment of a small
isolated project, free ports and PostgreSQL.

Tests marked `slow` (replays, fault injection, scale-out, load, the browser) run in `make test-all`
only; `make test` runs the rest."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("MLOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FLIGHTS = ROOT/"examples"/"flights.toml"  # the worked example's settings
EXAMPLE = json.loads((ROOT/"examples"/"predict_request.json").read_text())


def free_port() -> int:
    "A loopback port nothing listens on (bound, then released)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environ(**extra) -> dict:
    "This process's environment without any MLOPS_* setting, plus `extra`."
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}, **extra}


def small_project_environ(home:Path, **extra) -> dict:
    "The environment of a small project in `home`: the flights example, every 40th flight, 3 trials of at most 60 rounds, a loose latency budget."
    return clean_environ(MLOPS_CONFIG=str(FLIGHTS), MLOPS_DATA__CONTRACT=str(home/"contracts"/"flights.json"), MLOPS_STATE_DIR=str(home/"state"), MLOPS_RUNS_DIR=str(home/"runs"),
                         MLOPS_DATA__SAMPLE_EVERY="40", MLOPS_TUNE__N_TRIALS="3", MLOPS_TUNE__MAX_ROUNDS="60",
                         MLOPS_PIPELINE__NOTEBOOKS_DIR=str(ROOT/"nbs"),
                         MLOPS_GATE__LATENCY_BUDGET_MS="500",  # tests share two cores
                         **extra)


def postgres_url(driver:str="postgresql") -> str:
    "The test server's URL with `driver` as its scheme; the test is skipped, saying why, when no server answers."
    import psycopg
    try: psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as e:
        where = make_url(PG_URL).render_as_string(hide_password=True)
        pytest.skip(f"no PostgreSQL answers at {where} (set MLOPS_TEST_POSTGRES_URL): {str(e).strip().splitlines()[0]}")
    return make_url(PG_URL).set(drivername=driver).render_as_string(hide_password=False)


@contextmanager
def fresh_database(prefix:str):
    "A new, empty PostgreSQL database's URL (sqlalchemy); the test is skipped, saying why, when no server answers."
    import psycopg
    postgres_url()
    admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    name = f"{prefix}_{os.getpid()}"
    admin.execute(f"drop database if exists {name} with (force)")
    admin.execute(f"create database {name}")
    try: yield make_url(PG_URL).set(database=name)
    finally:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.close()


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    "A working folder and the environment of the session's small, isolated project."
    home = tmp_path_factory.mktemp("project")
    return home, small_project_environ(home)


def cli(project, name, *args, **env) -> subprocess.CompletedProcess:
    "Run console script `name` in `project`, with `env` added to its environment."
    home, base = project
    return subprocess.run([str(BIN/name), *args], cwd=home, env={**base, **env},
                          capture_output=True, text=True, timeout=900)


def ledger_of(project, run_id:str) -> dict:
    return json.loads((project[0]/"runs"/run_id/"run.json").read_text())


@pytest.fixture(scope="session")
def trained(project):
    """The ledger of the session's one successful `mlops_run` (champion v1), with what it printed on the console.
    Tests read it and the registry it made; a test that would change the registry or the run makes a project of its own."""
    result = cli(project, "mlops_run", "--run_id", "first", MLOPS_PIPELINE__PROGRESS="on")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered v1" in result.stdout
    return {**ledger_of(project, "first"), "console": result.stderr}


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    "A registry holding two versions of the model, v1 the champion; the settings file and a few request rows. Tests that move the alias or change a version put it back."
    import mlflow
    from mlops_nb.config import standalone_settings
    from mlops_nb.ingest import read_snapshot
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.registry import champion_version, load_bundle
    from mlops_nb.runs import save_settings, stage_run_dir, use_tracking
    settings = standalone_settings()
    train_and_register(settings, stage_run_dir(settings))
    train_and_register(settings, stage_run_dir(settings))
    use_tracking(settings)
    versions = sorted(str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{settings.model_name}'"))
    assert versions == ["1", "2"] and champion_version(settings) == "1"
    champion = load_bundle(settings, alias="champion")
    rows = (read_snapshot({"path": settings.snapshots_dir/f"{champion.data_digest}.parquet"})
            .select(list(champion.spec.inputs)).tail(1000).to_dicts())
    path = save_settings(settings, tmp_path_factory.mktemp("serve")/"settings.json")
    return settings, path, rows


class ServerProcess:
    "`mlops_serve` started as its own process on a free port, each line of its console output kept with when it came."
    def __init__(self, config:Path, ready:bool=True, **env):
        "Start it and wait until /ready answers 200 (or, not `ready`, until it listens)."
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN/"mlops_serve"), "--config", str(config), "--port", str(self.port)], env=clean_environ(**env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        self.output: list[str] = []
        self.stamps: list[float] = []  # when each line of output came
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, "".join(self.output)
            try:
                if httpx.get(f"{self.url}/ready" if ready else f"{self.url}/health", timeout=1).status_code == 200: return
            except httpx.TransportError: pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"the server did not become {'ready' if ready else 'alive'} within 120 s:\n" + "".join(self.output))

    def _read(self):
        for line in self.proc.stdout:
            self.stamps.append(time.time())
            self.output.append(line)

    def log(self, since:float=0.0, until:float=math.inf) -> str:
        "Its console output, or the lines that came between `since` and `until`."
        return "".join(line for t, line in zip(list(self.stamps), list(self.output)) if since <= t <= until)

    def metric(self, name:str) -> float:
        "The sum of the Prometheus series whose line starts with `name`, read from /metrics now."
        return metric(httpx.get(f"{self.url}/metrics", timeout=10).text, name)

    def stop(self) -> int:
        if self.proc.poll() is None: self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def metric(text:str, name:str) -> float:
    "The sum of the series in Prometheus `text` whose line starts with `name`."
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def browser():
    "Debian's Chromium, headless, driven by its chromedriver (the one the documentation's screenshots use); skipped, saying why, without them."
    import shutil
    from mlops_nb.docs import headless_chromium
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    driver = headless_chromium()
    yield driver
    driver.quit()
