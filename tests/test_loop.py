"""The closed loop through its commands: a shortened `mlops_replay` (two months, a slice of the flights),
then `mlops_schedule` on the replay's stores: one job at once, and the scheduler itself on a cron
expression until it is stopped (on a copy of the stores, waiting for its minute while the jobs run at once)."""
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import BIN, FLIGHTS, ROOT, clean_environ
from mlops_nb.config import load_settings

# Small and quick; a rule that every window breaks and a gate that lets every model through, so the
# test can tell what must happen: each month raises a new incident, which retrains, which promotes.
SETTINGS = {"MLOPS_CONFIG": str(FLIGHTS), "MLOPS_DATA__SAMPLE_EVERY": "40", "MLOPS_TUNE__N_TRIALS": "3", "MLOPS_TUNE__MAX_ROUNDS": "60",
            "MLOPS_GATE__LATENCY_BUDGET_MS": "500", "MLOPS_GATE__MIN_GAIN": "-1.0", "MLOPS_GATE__MAX_SLICE_DROP": "1.0",
            "MLOPS_GATE__MAX_WINDOW_DROP": "1.0", "MLOPS_MONITOR__ALERTS": json.dumps([{"name": "traffic", "metric": "rows", "above": 0}])}


def clean_env(**extra):
    return clean_environ(MLOPS_PIPELINE__NOTEBOOKS_DIR=str(ROOT/"nbs"), **extra)


class CronScheduler:
    """`mlops_schedule` on a cron expression, every minute, in the folder `home`, its console output in files there; a thread
    stops it (SIGTERM) once it has logged a job, or when it exits, or `within` seconds after it started."""
    def __init__(self, home:Path, within:float=150):
        self.home, self.log_file = home, home/"state"/"schedule.jsonl"
        self.seen = self.jobs()
        self.out, self.err = open(home/"schedule.out", "w"), open(home/"schedule.err", "w")
        self.process = subprocess.Popen([str(BIN/"mlops_schedule"), "--config", str(home/"settings.json")], cwd=home,
                                        env=clean_env(MLOPS_SCHEDULE__MONITOR="* * * * *", MLOPS_SCHEDULE__RETRAIN=""), stdout=self.out, stderr=self.err, text=True)
        self.exited_waiting = False  # it ended by itself before it logged a job
        self.watcher = threading.Thread(target=self._watch, args=(time.time() + within,), daemon=True)
        self.watcher.start()

    def jobs(self) -> int: return len(self.log_file.read_text().splitlines()) if self.log_file.exists() else 0

    def _watch(self, deadline:float):
        while self.jobs() == self.seen and time.time() < deadline:
            if self.process.poll() is not None:
                self.exited_waiting = True
                return
            time.sleep(1)
        self.stop()

    def stop(self):
        if self.process.poll() is None: self.process.send_signal(signal.SIGTERM)
        try: self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None: self.process.kill()
            self.out.close(); self.err.close()

    def stderr(self) -> str: return (self.home/"schedule.err").read_text()


@pytest.fixture(scope="module")
def replay_and_cron(request, tmp_path_factory):
    """A shortened replay of July and August: its folder and what it printed. When the cron test is to run, its scheduler starts
    as soon as the replay ends, in a copy of the replay's folder (settings and stores), and waits for its minute while the
    other tests run in the replay's own: no test here sees the other's jobs."""
    folder = tmp_path_factory.mktemp("loop")
    result = subprocess.run([str(BIN/"mlops_replay"), "--first", "7", "--last", "8"], cwd=folder, env=clean_env(**SETTINGS),
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    home, scheduler = folder/"replay", None
    if any(item.name == "test_scheduler_runs_its_cron_jobs_until_stopped" for item in request.session.items if getattr(item, "module", None) is request.module):
        copy = shutil.copytree(home, tmp_path_factory.mktemp("cron")/"replay")
        settings = home/"settings.json"  # its stores' paths, now the copy's
        (copy/"settings.json").write_text(settings.read_text().replace(str(home.resolve()), str(copy.resolve())))
        assert load_settings(copy/"settings.json", environ={}).state == (copy/"state").resolve()
        scheduler = CronScheduler(copy)
    try: yield home, result.stdout, scheduler
    finally:
        if scheduler: scheduler.stop()


@pytest.fixture(scope="module")
def replayed(replay_and_cron):
    "The folder of a shortened replay of July and August, and what it printed."
    home, printed, _ = replay_and_cron
    return home, printed


@pytest.mark.slow
def test_replay_serves_monitors_retrains_and_promotes(replayed):
    home, printed = replayed
    story = json.loads((home/"report"/"replay.json").read_text())
    months = story["months"]
    assert [m["month"] for m in months] == ["2013-07", "2013-08"]
    assert [m["served_by"] for m in months] == ["1", "2"]  # August is answered by the model retrained after July
    for m in months:
        assert m["requests"] > 500 and m["window"]["rows"] == m["requests"]
        assert m["window"]["labelled"] == 1.0 and 0.5 < m["window"]["roc_auc"] < 0.9  # every label arrived
        assert m["window"]["estimated_roc_auc"] is not None and "month" in m["window"]["drifted"]  # a new month every time
        assert len(m["new_alerts"]) == 1 and m["retrain"]["status"] == "ok" and m["retrain"]["promoted"]
    assert story["champion"] == "3" and (home/"report"/"story.png").stat().st_size > 20_000
    assert "2013-08: served by v2" in printed and "champion at the end: v3" in printed
    # retraining read the newly labelled months: the last run tested on August
    last_run = json.loads((Path(home/"runs")/months[-1]["retrain"]["run_id"]/"clean"/"clean.json").read_text())
    assert (last_run["split"]["valid_from"], last_run["split"]["test_from"]) == ("2013-07-01", "2013-08-01")


@pytest.mark.slow
def test_replay_alerts_are_stored_once_per_incident(replayed):
    home, _ = replayed
    engine = sa.create_engine(load_settings(home/"settings.json", environ={}).inference_log_url)
    with engine.connect() as c:
        alerts = c.execute(sa.text("select incident, new_incident, time from alerts order by id")).all()
        served = dict(c.execute(sa.text("select model_version, count(*) from predictions group by model_version")).all())
    engine.dispose()
    assert [(a[0], bool(a[1])) for a in alerts] == [("traffic on flights_late v1", True), ("traffic on flights_late v2", True)]
    assert alerts[0][2].startswith("2013-08-01")  # dated in the replay's time: the end of July
    assert set(served) == {"1", "2"}


def schedule_once(home, **env):
    result = subprocess.run([str(BIN/"mlops_schedule"), "--config", str(home/"settings.json"), "--once", "monitor"],
                            cwd=home, env=clean_env(**env), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_incident_starts_one_retrain(replayed):
    home, _ = replayed
    runs = lambda: len(list((home/"runs").glob("*/run.json")))
    before = runs()
    first = schedule_once(home)  # a new incident for v3, but a run started minutes ago: within the retraining cool-down
    assert first["status"] == "ok" and first["new_alerts"] == 1 and "retrain" not in first
    second = schedule_once(home, MLOPS_SCHEDULE__RETRAIN_COOLDOWN_HOURS="0")  # the same incident again: a repeat
    assert second["alerts"] == 1 and second["new_alerts"] == 0 and "retrain" not in second
    assert runs() == before
    third = schedule_once(home, MLOPS_SCHEDULE__RETRAIN_COOLDOWN_HOURS="0", MLOPS_MONITOR__COOLDOWN_HOURS="0")
    assert third["new_alerts"] == 1 and third["retrain"]["status"] == "ok" and third["retrain"]["registered_version"] == "4"
    assert runs() == before + 1
    history = [json.loads(line) for line in (home/"state"/"schedule.jsonl").read_text().splitlines()]
    assert [h["job"] for h in history][-3:] == ["monitor"]*3 and all(Path(h["report"], "report.html").exists() for h in history[-3:])


@pytest.mark.slow
def test_scheduler_runs_its_cron_jobs_until_stopped(replay_and_cron):
    scheduler = replay_and_cron[2]  # started when the replay ended, on a copy of its folder
    scheduler.watcher.join(timeout=300)
    assert not scheduler.exited_waiting, scheduler.stderr()[-3000:]
    assert scheduler.jobs() > scheduler.seen, "no job logged within 150 s of the start:\n" + scheduler.stderr()[-3000:]
    record = json.loads(scheduler.log_file.read_text().splitlines()[-1])
    assert record["job"] == "monitor" and record["status"] == "ok"
    scheduler.stop()
    err = scheduler.stderr()
    assert scheduler.process.returncode == 0 and "monitor: * * * * * (UTC), next at" in err and "scheduler stopped" in err


def test_bad_cron_expression_is_named(tmp_path):
    result = subprocess.run([str(BIN/"mlops_schedule")], cwd=tmp_path, env=clean_env(MLOPS_SCHEDULE__RETRAIN="every monday"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "schedule.retrain = 'every monday' is not a cron expression" in result.stderr
