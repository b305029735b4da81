"""Bring your own data: a table of a different shape (other columns and types, a boolean target, no
join), described only by a short settings file (the defaults suit any table), goes through the whole
pipeline, the server and monitoring."""
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import BIN, ROOT
from mlops_nb.config import load_settings
from mlops_nb.registry import load_bundle
from mlops_nb.monitor import monitor_report
from mlops_nb.serve import app_client, create_app

SETTINGS = """
experiment = "machines"
model_name = "machine_failure"

[data]
target = "failed"
time_column = "reading_at"
id_columns = ["machine_id", "reading_at"]
ignore_columns = ["machine_id"]
contract = "contract.json"

[data.sources.readings]
uri = "readings.csv"
datetimes = { reading_at = "" }

[features]
derived = { hour = "EXTRACT(HOUR FROM reading_at)" }
units = { temperature = "°C", vibration = "mm/s" }

[split]
valid_from = "2024-09-01"
test_from = "2024-11-01"

[tune]
n_trials = 3
max_rounds = 60

[evaluate]
slices = ["site", "model"]
"""


def machine_readings(n=6000, seed=1) -> pl.DataFrame:
    "Hourly sensor readings of 50 machines over 2024; hot, shaking machines fail more."
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    hours = np.sort(rng.choice(366*24, size=n, replace=False))
    temperature = rng.normal(60, 8, n)
    vibration = rng.gamma(2.0, 1.5, n)
    site = rng.choice(["north", "south", "east", "west"], n)
    risk = -6 + 0.06*(temperature - 60) + 0.5*vibration + np.where(site == "east", 0.7, 0.0)
    return pl.DataFrame({
        "machine_id": [f"m{i:02d}" for i in rng.integers(0, 50, n)],
        "reading_at": [(start + timedelta(hours=int(h))).strftime("%Y-%m-%dT%H:%M:%SZ") for h in hours],
        "temperature": temperature.round(2), "vibration": vibration.round(3),
        "load_pct": rng.integers(10, 100, n), "site": site, "model": rng.choice(["A1", "A2", "B7"], n),
        "failed": rng.random(n) < 1/(1 + np.exp(-risk)),
    })


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    home = tmp_path_factory.mktemp("own_data")
    readings = machine_readings()
    readings.write_csv(home/"readings.csv")
    (home/"mlops.toml").write_text(SETTINGS)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "MLOPS_PIPELINE__NOTEBOOKS_DIR": str(ROOT/"nbs")}
    result = subprocess.run([str(BIN/"mlops_run")], cwd=home, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = load_settings(home/"mlops.toml", environ={"MLOPS_PIPELINE__NOTEBOOKS_DIR": str(ROOT/"nbs")})
    return home, settings, readings


def test_pipeline_runs_on_a_table_of_another_shape(project):
    home, settings, _ = project
    [ledger] = [json.loads(p.read_text()) for p in (home/"runs").glob("*/run.json")]
    assert ledger["status"] == "ok" and ledger["promoted"]
    contract = json.loads((home/"contract.json").read_text())
    assert contract["columns"]["failed"]["type"] == "int" and contract["keys"] == ["machine_id", "reading_at"]
    spec = json.loads((Path(ledger["run_dir"])/"clean"/"transform.json").read_text())
    assert set(spec["features"]) == {"temperature", "vibration", "load_pct", "hour", "site", "model"}
    assert spec["inputs"]["reading_at"] == "datetime"
    eda = json.loads((Path(ledger["run_dir"])/"eda"/"eda.json").read_text())
    assert "rate_by_site.csv" in eda["files"]


def test_server_and_monitoring_use_the_same_settings(project):
    _, settings, readings = project
    champion = load_bundle(settings, alias="champion")
    assert champion.name == "machine_failure"
    rows = readings.tail(300).select(list(champion.spec.inputs)).to_dicts()
    with app_client(create_app(settings)) as client:
        answer = client.post("/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 300
        wrong = client.post("/predict", json={"rows": [{**rows[0], "vibration": "high"}]})
        assert wrong.status_code == 400 and "$.rows[0].vibration" in wrong.json()["detail"]
    report = monitor_report(settings, settings.state/"monitor"/"check")
    assert report["status"] == "ok" and report["window_rows"] == 300
    assert {f["feature"] for f in report["features"]} == set(champion.spec.features)
