"""One pipeline run at a time: a second `mlops_run` exits at once naming the run that holds the lock,
and a killed holder never blocks the next run, with the file lock and with PostgreSQL's advisory lock."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import BIN, clean_environ, postgres_url
from mlops_nb.config import load_settings
from mlops_nb.pipeline import RunLocked, run_lock


def hold(settings_kwargs:dict, run_id:str) -> subprocess.Popen:
    "A process that takes the run lock and keeps it until killed."
    code = textwrap.dedent(f"""
        import time
        from mlops_nb.config import load_settings
        from mlops_nb.pipeline import run_lock
        with run_lock(load_settings(environ={{}}, **{settings_kwargs!r}), {run_id!r}):
            print("locked", flush=True)
            time.sleep(600)""")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "locked", proc.stderr.read()
    return proc


def test_second_run_exits_at_once_naming_the_holder(tmp_path):
    holder = hold({"state_dir": str(tmp_path/"state")}, "first-run")
    try:
        env = clean_environ(MLOPS_STATE_DIR=str(tmp_path/"state"), MLOPS_RUNS_DIR=str(tmp_path/"runs"))
        started = time.perf_counter()
        result = subprocess.run([str(BIN/"mlops_run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "run first-run (pid" in result.stderr and "holds the lock" in result.stderr
        assert time.perf_counter() - started < 60  # no stage ran: it refused before starting
        assert not (tmp_path/"runs").exists() or not list((tmp_path/"runs").iterdir())
    finally:
        holder.kill(); holder.wait()


def test_two_runs_started_at_once_one_runs_the_other_exits(tmp_path):
    env = clean_environ(MLOPS_STATE_DIR=str(tmp_path/"state"), MLOPS_RUNS_DIR=str(tmp_path/"runs"), MLOPS_DATA__SAMPLE_EVERY="40")
    runs = {name: subprocess.Popen([str(BIN/"mlops_run"), "--run_id", name], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("run-a", "run-b")}
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in runs.values()) and time.time() < deadline: time.sleep(0.1)
        refused = next(name for name, p in runs.items() if p.poll() is not None)
        winner = "run-b" if refused == "run-a" else "run-a"
        err = runs[refused].stderr.read()
        assert runs[refused].returncode == 2, err[-2000:]
        assert f"run {winner} (pid {runs[winner].pid}" in err and "holds the lock" in err
        assert runs[winner].poll() is None  # the other goes on
        assert not (tmp_path/"runs"/refused).exists()
    finally:
        for p in runs.values(): p.kill(); p.wait()


def test_postgres_advisory_lock_is_shared_and_freed_when_its_holder_dies(tmp_path):
    postgres = postgres_url()
    kwargs = {"state_dir": str(tmp_path/"state"), "tracking_uri": postgres, "model_name": f"lock_test_{os.getpid()}"}
    settings = load_settings(environ={}, **kwargs)
    holder = hold(kwargs, "pg-first-run")
    try:
        with pytest.raises(RunLocked, match="mlops_run pg-first-run"):
            with run_lock(settings, "pg-second-run"): pass
        assert not (tmp_path/"state"/"run.lock").exists()  # the database holds this lock, not a file
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait()
    for _ in range(50):  # the server ends the dead client's session, and its lock with it
        try:
            with run_lock(settings, "pg-third-run"): break
        except RunLocked: time.sleep(0.2)
    else: pytest.fail("the advisory lock outlived its holder by 10 s")
