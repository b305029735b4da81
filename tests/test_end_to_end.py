"""The whole loop through its command-line tools: `mlops_run` on a small slice (the session's shared
run), then `mlops_serve` as a real process answering HTTP, then runs that fail and must leave the
champion alone."""
import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import nbformat
import numpy as np
import polars as pl
import pytest

from conftest import BIN, EXAMPLE, ROOT, cli, free_port, ledger_of, small_project_environ
from mlops_nb.prepare import apply_transform
from mlops_nb.clean import load_transform
from mlops_nb.config import load_settings
from mlops_nb.registry import champion_version
from mlops_nb.ingest import read_snapshot, write_snapshot


def test_run_registers_a_champion(project, trained):
    assert trained["status"] == "ok"
    assert [s["name"] for s in trained["stages"]] == ["01_ingest", "02_eda", "03_clean", "04_tune", "05_evaluate"]
    assert all(s["status"] == "ok" and s["summary"] for s in trained["stages"])
    run_dir = Path(trained["run_dir"])
    assert all((run_dir/f"{s['name']}.ipynb").exists() for s in trained["stages"])
    assert (run_dir/"settings.json").exists() and len(trained["data_digest"]) == 64
    assert trained["promoted"] and trained["champion"] == trained["registered_version"] == "1"
    assert champion_version(load_settings(environ=project[1])) == "1"


def test_run_shows_progress_and_a_line_per_stage(trained):
    console = trained["console"]
    assert re.search(rf"run {trained['run_id']}: 100%\|.*\| 5/5 ", console), console[-2000:]  # the run's bar, in stages
    for stage in ("01_ingest", "02_eda", "03_clean", "04_tune", "05_evaluate"):
        assert re.search(rf"{stage}: +\d+%\|.*\| \d+/\d+ \[.*cell", console), stage  # the stage's bar, in cells
        assert len(re.findall(rf"\] {stage} ok in [0-9.]+s: ", console)) == 1  # and one log line
    assert "KeyboardInterrupt" not in console  # no kernel is interrupted on its way to shutdown


@pytest.fixture(scope="module")
def server(project, trained):
    "`mlops_serve` running as a process on a free port; its base URL."
    home, env = project
    port = free_port()
    proc = subprocess.Popen([str(BIN/"mlops_serve"), "--port", str(port)], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.5)
        else: pytest.fail("the server did not become ready within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prediction_over_http(server, trained, project):
    r = httpx.post(f"{server}/predict", json=EXAMPLE, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == r.headers["x-model-version"] == trained["champion"]
    [prediction] = body["predictions"]
    assert 0 < prediction["probability"] < 1
    assert prediction["label"] == int(prediction["probability"] >= body["threshold"])
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_server_features_equal_the_training_path(server, trained):
    "One transformation: the vectors the server computes equal the ones training computes for the same rows."
    run_dir = Path(trained["run_dir"])
    spec = load_transform(run_dir)
    rows = pl.read_parquet(run_dir/"clean"/"test.parquet").head(200)
    answer = httpx.post(f"{server}/predict?features=true", json={"rows": rows.select(list(spec.inputs)).to_dicts()}, timeout=30)
    assert answer.status_code == 200, answer.text
    served = np.array(answer.json()["features"], dtype=float)
    np.testing.assert_array_equal(served, apply_transform(rows, spec).to_numpy())


def test_data_versions_listed_and_compared(project, trained):
    home, env = project
    settings = load_settings(environ=env)
    first = read_snapshot({"path": settings.snapshots_dir/f"{trained['data_digest']}.parquet"})
    second = write_snapshot(first.tail(-100).with_columns(pl.col("distance")*2), settings.snapshots_dir, "edited copy")
    listed = cli(project, "mlops_data", "list")
    assert listed.returncode == 0 and trained["data_digest"] in listed.stdout and second["digest"] in listed.stdout
    diff = cli(project, "mlops_data", "diff", trained["data_digest"][:10], second["digest"][:10])
    assert diff.returncode == 0, diff.stderr
    assert "rows: +0 added, -100 removed" in diff.stdout and "distance" in diff.stdout


def test_invalid_rows_get_a_4xx_naming_the_field(server):
    row = EXAMPLE["rows"][0]
    wrong_type = httpx.post(f"{server}/predict", json={"rows": [row, {**row, "distance": "far"}]})
    assert wrong_type.status_code == 400 and "$.rows[1].distance" in wrong_type.json()["detail"]
    missing = httpx.post(f"{server}/predict", json={"rows": [{k: v for k, v in row.items() if k != "carrier"}]})
    assert missing.status_code == 400 and "carrier" in missing.json()["detail"]


def test_monitor_reads_the_served_predictions(server, trained, project):
    rows = EXAMPLE["rows"]*20
    assert httpx.post(f"{server}/predict", json={"rows": rows}, timeout=10).status_code == 200
    out_dir = project[0]/"monitor"
    result = cli(project, "mlops_monitor", "--out_dir", str(out_dir))
    assert result.returncode in (0, 3), result.stderr[-3000:]
    report = json.loads((out_dir/"monitor.json").read_text())
    assert report["model_version"] == trained["champion"] and report["window_rows"] >= len(rows)
    # twenty copies of one December flight are nothing like the training months
    assert result.returncode == 3 and "DRIFT" in result.stdout and report["drift_detected"]
    assert all((out_dir/f).exists() for f in ("drift.png", "drift_over_time.png", "performance.png", "windows.csv", "report.html"))
    html = (out_dir/"report.html").read_text()
    assert "Drift and performance" in html and html.count("<img") >= 3 and "http" not in html.replace("http://127.0.0.1", "")
    import mlflow  # the report is in MLflow too, as a run of its own
    from mlops_nb.runs import use_tracking
    use_tracking(load_settings(environ=project[1]))
    [run] = mlflow.search_runs(filter_string=f"tags.`mlops_nb.kind` = 'monitor' and tags.model_version = '{trained['champion']}'",
                               output_format="list", max_results=1, order_by=["attribute.start_time DESC"])
    assert "monitor/report.html" in [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "monitor")]
    assert run.data.metrics["rows"] == report["window_rows"]


def test_registered_model_reproduces_from_its_records(project, trained):
    result = cli(project, "mlops_reproduce", trained["mlflow_run_id"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"v{trained['registered_version']}" in result.stdout and "rebuilt model matches" in result.stdout


def test_rollback_needs_a_previous_champion(project, trained):
    refused = cli(project, "mlops_rollback")
    assert refused.returncode != 0 and "no previous champion" in refused.stderr
    assert champion_version(load_settings(environ=project[1])) == trained["champion"]


@pytest.mark.slow
def test_study_without_a_completed_trial_fails_clearly(project, trained):
    result = cli(project, "mlops_run", "--run_id", "no-trial", MLOPS_TUNE__N_TRIALS="0")
    assert result.returncode == 1
    assert "stage 04_tune failed" in result.stderr and "no completed trial" in result.stderr
    assert champion_version(load_settings(environ=project[1])) == trained["champion"]


def test_failed_run_exits_nonzero_and_keeps_the_champion(project, trained):
    result = cli(project, "mlops_run", "--run_id", "empty-test-split", MLOPS_SPLIT__TEST_FROM="2014-01-01")
    assert result.returncode == 1
    # the EDA stage splits as the clean stage will (to compare training and test rows), so it stops first
    assert "stage 02_eda failed" in result.stderr and "test split is empty" in result.stderr
    failed = ledger_of(project, "empty-test-split")
    assert failed["status"] == "failed" and failed["stages"][-1]["name"] == "02_eda"
    assert (Path(failed["run_dir"])/"02_eda.ipynb").exists()
    assert champion_version(load_settings(environ=project[1])) == trained["champion"]
    # `mlops_runs --run_id` (and the run's own log) name the cell it stopped in and how to open it, relative to the project's folder
    shown = cli(project, "mlops_runs", "--run_id", "empty-test-split")
    notebook = "runs/empty-test-split/02_eda.ipynb"
    where = re.search(rf'failed at cell (\d+) \(In \[\d+\]\), line (\d+), of {re.escape(notebook)}: "(.+)"', shown.stdout)
    assert where and f"open it: make lab NB={notebook}   (or: jupyter lab {notebook})" in shown.stdout, shown.stdout
    assert where[0] in result.stderr and f"jupyter lab {notebook}" in result.stderr, result.stderr[-3000:]
    code = [c for c in nbformat.read(Path(failed["run_dir"])/"02_eda.ipynb", as_version=4).cells if c.cell_type == "code"]
    raised = [n for n, c in enumerate(code, 1) if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert raised == [int(where[1])]  # the cell it names is the one with the traceback, and the line the one that raised
    assert code[raised[0] - 1].source.splitlines()[int(where[2]) - 1].strip().startswith(where[3].removesuffix("..."))
    assert "test split is empty" in code[raised[0] - 1].outputs[-1].evalue


@pytest.mark.slow
def test_stage_over_its_time_is_killed_and_keeps_the_champion(project, trained):
    result = cli(project, "mlops_run", "--run_id", "too-slow", MLOPS_PIPELINE__STAGE_TIMEOUTS='{"04_tune": 2}')
    assert result.returncode == 1
    assert "stage 04_tune timed out after 2 s: killed with its kernel" in result.stderr
    ledger = ledger_of(project, "too-slow")
    assert ledger["status"] == "failed" and [s["status"] for s in ledger["stages"]] == ["ok", "ok", "ok", "failed"]
    assert "timed out after 2 s" in ledger["stages"][-1]["error"]
    run_dir = Path(ledger["run_dir"])
    assert not (run_dir/"tune").exists() and (run_dir/"clean"/"train.parquet").exists()  # nothing of the killed stage in place
    assert champion_version(load_settings(environ=project[1])) == trained["champion"]


@pytest.mark.slow
def test_kernel_killed_by_a_cell_fails_the_run_and_keeps_the_champion(project, trained, tmp_path):
    nbs = tmp_path/"nbs"
    shutil.copytree(ROOT/"nbs", nbs)
    eda = nbformat.read(nbs/"02_eda.ipynb", as_version=4)
    after_parameters = next(i for i, c in enumerate(eda.cells) if "parameters" in c.metadata.get("tags", [])) + 1
    eda.cells.insert(after_parameters, nbformat.v4.new_code_cell("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                                                                 metadata={"tags": ["pipeline"]}))
    nbformat.write(eda, nbs/"02_eda.ipynb")
    started = time.perf_counter()
    result = cli(project, "mlops_run", "--run_id", "kernel-killed", MLOPS_PIPELINE__NOTEBOOKS_DIR=str(nbs))
    assert result.returncode == 1 and time.perf_counter() - started < 300
    assert "stage 02_eda failed: the kernel died" in result.stderr
    ledger = ledger_of(project, "kernel-killed")
    assert ledger["status"] == "failed" and [s["status"] for s in ledger["stages"]] == ["ok", "failed"]
    assert "the kernel died" in ledger["stages"][-1]["error"] and ledger["retries"] == []  # not a transient failure
    run_dir = Path(ledger["run_dir"])
    assert not (run_dir/"eda").exists() and (run_dir/"02_eda.ipynb").exists()
    assert ledger["stages"][0]["outputs"] == {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                                              for p in sorted((run_dir/"ingest").rglob("*")) if p.is_file()}
    assert champion_version(load_settings(environ=project[1])) == trained["champion"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_outputs(trained, tmp_path):
    """SIGKILL the runner in the middle of a stage; `mlops_runs` calls the run interrupted; `--resume` keeps what was
    done and ends where the session's uninterrupted run ended. In a project of its own: the resumed run registers a model."""
    home, env = tmp_path, small_project_environ(tmp_path)
    project = home, env
    runner = subprocess.Popen([str(BIN/"mlops_run"), "--run_id", "killed-run"], cwd=home, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger_path = home/"runs"/"killed-run"/"run.json"
    deadline = time.time() + 600
    while time.time() < deadline:  # until 03_clean is recorded as done: the runner is inside 04_tune
        before = json.loads(ledger_path.read_text()) if ledger_path.exists() else {"stages": []}
        if [s["name"] for s in before["stages"]] == ["01_ingest", "02_eda", "03_clean"]: break
        assert runner.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.1)
    runner.kill(); runner.wait()
    listed = cli(project, "mlops_runs")
    assert any(line.startswith("killed-run") and "interrupted" in line for line in listed.stdout.splitlines()), listed.stdout
    result = cli(project, "mlops_run", "--resume", "killed-run")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads(ledger_path.read_text())
    assert resumed["status"] == "ok" and resumed["mlflow_run_id"] == before["mlflow_run_id"]
    assert [bool(s.get("resumed")) for s in resumed["stages"]] == [True, True, True, False, False]
    run_dir, uninterrupted = Path(resumed["run_dir"]), Path(trained["run_dir"])
    for stage in ("01_ingest", "02_eda", "03_clean"):  # kept as they were, byte for byte
        assert next(s for s in resumed["stages"] if s["name"] == stage)["outputs"] == next(s for s in before["stages"] if s["name"] == stage)["outputs"]
    best, first = json.loads((run_dir/"tune"/"best.json").read_text()), json.loads((uninterrupted/"tune"/"best.json").read_text())
    assert best["params"] == first["params"] and best["valid_auc"] == first["valid_auc"]
    assert json.loads((run_dir/"evaluate"/"evaluate.json").read_text())["metrics"] == json.loads((uninterrupted/"evaluate"/"evaluate.json").read_text())["metrics"]
    shown = cli(project, "mlops_runs", "--run_id", "killed-run")
    assert "skipped: completed by the earlier attempt" in shown.stdout and "05_evaluate" in shown.stdout
