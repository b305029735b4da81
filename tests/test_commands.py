"""Bad settings are reported by every command as one line naming the file, the key and the problem,
with a non-zero exit status and no traceback: a TOML file that does not parse, and a value of the
wrong type. (`mlops_init` writes settings rather than reading them.)"""
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, clean_environ

COMMANDS = {  # command: its arguments besides --config
    "mlops_run": [], "mlops_runs": [], "mlops_data": ["list"], "mlops_docs": [], "mlops_schedule": ["--once", "monitor"], "mlops_replay": [],
    "mlops_monitor": [], "mlops_reproduce": ["1"], "mlops_rollback": [], "mlops_serve": []}
HEAVY = {"mlops_monitor", "mlops_reproduce", "mlops_rollback", "mlops_serve"}  # they import XGBoost and MLflow first: 3 to 8 s each on two shared cores

BAD = {  # what the file holds: what the one line must say besides the file's name
    "syntax": ('[serve]\nport = \n', ["line 2, column 8", "not valid TOML"]),
    "type": ('[serve]\nport = "x"\n', ["serve.port", "expected `int`, got `str`"])}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c in HEAVY else c for c in COMMANDS])
def test_bad_settings_are_one_line_naming_file_and_key(command, bad, tmp_path):
    text, said = BAD[bad]
    settings = tmp_path/"bad settings.toml"
    settings.write_text(text)
    result = subprocess.run([str(BIN/command), *COMMANDS[command], "--config", str(settings)], cwd=tmp_path, env=clean_environ(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [l for l in result.stderr.splitlines() if str(settings) in l]  # one line names the file...
    assert all(s in line for s in said), line  # ...and the key or place, and the problem
    assert not (tmp_path/"runs").exists() and not (tmp_path/"state").exists()  # nothing started


@pytest.mark.slow
def test_tune_worker_names_the_run_folders_settings(tmp_path):
    (tmp_path/"clean").mkdir()
    (tmp_path/"clean"/"transform.json").write_text("{}")
    (tmp_path/"settings.json").write_text('{"tune": {"n_trials": "many"}}')
    result = subprocess.run([str(BIN/"mlops_tune_worker"), str(tmp_path), "--wait", "0"], cwd=tmp_path, env=clean_environ(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert f"mlops_tune_worker: {tmp_path/'settings.json'}: tune.n_trials: expected `int`, got `str`" in result.stderr, result.stderr


def test_docs_without_quarto_says_how_to_get_it(tmp_path):
    "`make docs` (mlops_docs) on a machine without Quarto: one message saying how to install it, a non-zero exit, nothing built."
    import os
    from conftest import FLIGHTS
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d)/"quarto").exists())
    result = subprocess.run([str(BIN/"mlops_docs"), "--config", str(FLIGHTS), "--dest", str(tmp_path/"site")], cwd=tmp_path,
                            env=clean_environ(PATH=path, MLOPS_STATE_DIR=str(tmp_path/"state")), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "Quarto is not installed" in result.stderr and "quarto.org" in result.stderr and "make docs" in result.stderr, result.stderr
    assert not (tmp_path/"site").exists()
