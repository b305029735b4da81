"""A run killed or failed leaves no MLflow run RUNNING: a stage that raises ends its run FAILED;
SIGTERM ends the pipeline's run and its stage's KILLED; after SIGKILL, the next run (holding the run
lock) ends the dead run's MLflow runs KILLED. The stages are one-cell notebooks, so a run takes seconds."""
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import BIN, clean_environ
from mlops_nb.config import load_settings
from mlops_nb.pipeline import STAGES
from mlops_nb.runner import one_cell_notebook


def fake_project(home:Path) -> tuple[dict, Path]:
    "The environment of a project whose first stage opens its MLflow run, then hangs while `hang` exists, else raises; and `hang`."
    nbs, hang = home/"nbs", home/"hang"
    nbs.mkdir()
    for stage in STAGES: one_cell_notebook(nbs, stage, "pass")
    one_cell_notebook(nbs, "01_ingest", textwrap.dedent(f"""
        import pathlib, time
        from mlops_nb.config import load_settings
        from mlops_nb.runs import stage_run
        with stage_run(load_settings(config), "01_ingest", parent_run_id):
            pathlib.Path(run_dir, "started").touch()
            while pathlib.Path({str(hang)!r}).exists(): time.sleep(0.1)
            raise ValueError("the stage fails")"""))
    return clean_environ(MLOPS_STATE_DIR=str(home/"state"), MLOPS_RUNS_DIR=str(home/"runs"), MLOPS_PIPELINE__NOTEBOOKS_DIR=str(nbs),
                         MLOPS_PIPELINE__KERNEL="python3", MLOPS_PIPELINE__RETRIES="0"), hang


def start(home:Path, env:dict, run_id:str) -> subprocess.Popen:
    "`mlops_run` started, returned once its first stage has opened its MLflow run."
    proc = subprocess.Popen([str(BIN/"mlops_run"), "--run_id", run_id], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (home/"runs"/run_id/"started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    return proc


def mlflow_runs(env:dict) -> dict:
    "Every MLflow run of the project's experiment by its pipeline's run id and name: status and tags."
    import mlflow
    settings = load_settings(environ=env)
    client = mlflow.MlflowClient(settings.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(settings.experiment).experiment_id])
    pipeline = {r.info.run_id: r.data.tags["mlops_nb.run_id"] for r in runs if "mlops_nb.run_id" in r.data.tags}
    return {(pipeline.get(r.data.tags.get("mlflow.parentRunId"), pipeline.get(r.info.run_id)), r.info.run_name): (r.info.status, r.data.tags, r.info.run_id)
            for r in runs}


@pytest.mark.slow  # about 40 s: a new MLflow store, a kernel, MLflow imported twice
def test_sigterm_ends_the_runs_killed(tmp_path):
    env, hang = fake_project(tmp_path)
    hang.touch()
    proc = start(tmp_path, env, "stopped")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "run stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    runs = mlflow_runs(env)
    assert {k: v[0] for k, v in runs.items()} == {("stopped", "pipeline stopped"): "KILLED", ("stopped", "01_ingest"): "KILLED"}


@pytest.mark.slow
def test_next_run_ends_a_killed_runs_mlflow_runs_killed(tmp_path):
    env, hang = fake_project(tmp_path)
    hang.touch()
    proc = start(tmp_path, env, "killed")
    proc.kill(); proc.wait()
    runs = mlflow_runs(env)
    assert {k: v[0] for k, v in runs.items()} == {("killed", "pipeline killed"): "RUNNING", ("killed", "01_ingest"): "RUNNING"}
    kernel = int(runs["killed", "01_ingest"][1]["mlops_nb.pid"])
    deadline = time.time() + 30  # the stage's process and kernel follow their runner
    while psutil.pid_exists(kernel) and time.time() < deadline: time.sleep(0.1)
    hang.unlink()
    result = subprocess.run([str(BIN/"mlops_run"), "--run_id", "next"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "run failed: stage 01_ingest failed" in result.stderr, result.stderr[-3000:]
    [line] = [l for l in result.stderr.splitlines() if "now KILLED" in l]  # one line names them
    assert all(runs["killed", name][2] in line for name in ("pipeline killed", "01_ingest")), line
    after = {k: v[0] for k, v in mlflow_runs(env).items()}
    assert after == {("killed", "pipeline killed"): "KILLED", ("killed", "01_ingest"): "KILLED",  # ended by the next run
                     ("next", "pipeline next"): "FAILED", ("next", "01_ingest"): "FAILED"}  # a stage that raises: FAILED
