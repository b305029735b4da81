"""A new user's first attempt, on real tables that ship inside PyPI packages (none of them flights): `mlops_init`
writes the settings, then `mlops_run`, `mlops_serve`, feedback and `mlops_monitor` each work at the first try,
with no edit to what `mlops_init` wrote.

- breast cancer (scikit-learn): 569 rows, 30 number columns with spaces in their names, no time at all;
- penguins (palmerpenguins): 344 rows, categorical columns, gaps, a text label with gaps, a year column;
- Seattle weather (vega_datasets): 1,461 days, the date as text, a label made by a rule.

Two generated tables add the shapes a real table may have: a single feature with a yes/no text label
(500 rows), and 200 columns with an integer time, a date and a datetime written as text (600 rows).

The tables are independent (their own folders, stores and ports): their attempts run two at a time, in threads that
wait on the commands' processes; each table's tests wait for its own attempt, and fail with it alone."""
import json
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from conftest import BIN, ROOT, clean_environ, free_port
from mlops_nb.config import DataSettings, load_settings
from mlops_nb.registry import load_bundle
from mlops_nb.ingest import label_rows


def package_file(package:str, *parts:str) -> Path:
    return Path(find_spec(package).submodule_search_locations[0]).joinpath(*parts)


def breast_cancer(folder:Path) -> Path:
    from sklearn.datasets import load_breast_cancer
    pl.from_pandas(load_breast_cancer(as_frame=True).frame).write_csv(folder/"breast_cancer.csv")
    return folder/"breast_cancer.csv"


def penguins(folder:Path) -> Path:
    return Path(shutil.copy(package_file("palmerpenguins", "data", "penguins.csv"), folder))


def seattle_weather(folder:Path) -> Path:
    return Path(shutil.copy(package_file("vega_datasets", "_data", "seattle-weather.csv"), folder))


def single_feature(folder:Path) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    pl.DataFrame({"x": x.round(4), "answer": np.where(x + 0.5*rng.normal(size=500) > 0.3, "yes", "no")}).write_csv(folder/"single.csv")
    return folder/"single.csv"


def wide(folder:Path) -> Path:
    rng = np.random.default_rng(2)
    n = 600
    numbers = {f"c{i:03d}": rng.normal(size=n).round(4) for i in range(190)}
    kinds = {f"k{i}": rng.choice(["a", "b", "c", "d"], n) for i in range(10)}
    opened = np.datetime64("2020-01-01") + rng.integers(0, 1500, n).astype("timedelta64[D]")  # a Parquet date column
    last_seen = (np.datetime64("2023-01-01T00:00") + rng.integers(0, 525_600, n).astype("timedelta64[m]")).astype(str)  # ISO text
    summer = np.isin(opened.astype("datetime64[M]").astype(int) % 12, [5, 6, 7])
    logit = 3*numbers["c000"] - 2*numbers["c001"] + 2*(kinds["k0"] == "a") + 2*summer
    table = pl.DataFrame({"epoch": 1_700_000_000 + 3600*np.arange(n), **numbers, **kinds, "opened": opened, "last_seen": last_seen,
                          "hit": rng.random(n) < 1/(1 + np.exp(-logit))})
    table.write_parquet(folder/"wide.parquet")
    return folder/"wide.parquet"


# table, its file, mlops_init's arguments beyond the file, and what the run must have found
TABLES = {
    "breast_cancer": (breast_cancer, ["--target", "target"], {"time_column": "", "features": 30}),
    "penguins": (penguins, ["--target", "sex = 'male'", "--time", "year"],
                 {"time_column": "year", "features": 6, "unlabelled": 11, "data_windows": ("1y", ["2007", "2008", "2009"])}),
    "seattle_weather": (seattle_weather, ["--target", "precipitation > 0"],
                        {"time_column": "date", "features": 4, "data_windows": ("1y", [f"{y}-01-01T00:00" for y in (2012, 2013, 2014, 2015)])}),
    "single_feature": (single_feature, ["--target", "answer"], {"time_column": "", "features": 1}),
    "wide": (wide, ["--target", "hit", "--time", "epoch"], {"time_column": "epoch", "features": 207, "dates": {"opened": "date", "last_seen": "datetime"}}),
}


def run(folder:Path, *command:str, timeout:float=900, env:dict|None=None) -> subprocess.CompletedProcess:
    env = clean_environ(MLOPS_TUNE__N_TRIALS="3", MLOPS_TUNE__MAX_ROUNDS="100", MLOPS_PIPELINE__NOTEBOOKS_DIR=str(ROOT/"nbs"), **(env or {}))
    return subprocess.run([str(BIN/command[0]), *command[1:]], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


AT_ONCE = 2  # tables worked on at the same time: their commands mostly wait on process start-up, kernels and each other
_mlflow = threading.Lock()  # load_bundle points the process's MLflow at one table's store at a time


def attempt(name:str, folder:Path) -> tuple[dict, str]:
    "One table from file to served model and monitoring report, each command once: what each left, and a line saying how it went."
    make, init_args, expected = TABLES[name]
    table = make(folder)
    started = time.perf_counter()
    init = run(folder, "mlops_init", table.name, *init_args)
    assert init.returncode == 0, init.stderr
    trained = run(folder, "mlops_run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    settings = load_settings(folder/"mlops.toml", environ={})
    with _mlflow: champion = load_bundle(settings, alias="champion")
    raw = pl.read_parquet(table) if table.suffix == ".parquet" else pl.read_csv(table, null_values=["NA", ""])
    labels = label_rows(raw, DataSettings(target=settings.data.target, target_rule=settings.data.target_rule))[settings.data.target]
    port = free_port()
    server = subprocess.Popen([str(BIN/"mlops_serve"), "--port", str(port)], cwd=folder, env=clean_environ(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client, ThreadPoolExecutor(4) as senders:  # one client: its connections are kept alive
            for _ in range(1200):
                try:
                    if client.get("/ready", timeout=2).status_code == 200: break
                except httpx.HTTPError: pass
                assert server.poll() is None, server.stderr.read()[-3000:]
                time.sleep(0.1)
            sent = [*champion.spec.inputs, *([settings.data.time_column] if settings.data.time_column else [])]  # the data's time beside the inputs
            inputs = raw.select(sent).with_columns(pl.col(pl.Date, pl.Datetime).dt.to_string())  # JSON carries dates as ISO 8601 text
            labels, answers, feedback = labels.to_list(), [], []
            for start in range(0, raw.height, 500):  # within serve.max_rows per request
                answer = client.post("/predict", json={"rows": inputs.slice(start, 500).to_dicts()}, timeout=60)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
                feedback += [{"request_id": answers[-1]["request_id"], "row": row, "label": int(label)}
                             for row, label in enumerate(labels[start:start + 500]) if label is not None]
            for told in senders.map(lambda body: client.post("/feedback", json=body, timeout=10), feedback):  # one label a request, a few at once
                assert told.status_code == 202, told.text
            given = len(feedback)
            dates = [c for c, t in champion.spec.inputs.items() if t in ("date", "datetime")]
            if dates:  # a date that is not one is refused, naming the row and the column
                bad = client.post("/predict", json={"rows": [{**inputs.row(0, named=True), dates[0]: "31/12/2024"}]}, timeout=10)
    finally:
        server.terminate(); server.wait(timeout=60)
    monitored = run(folder, "mlops_monitor", "--out_dir", str(folder/"monitor"))
    assert monitored.returncode in (0, 3), monitored.stderr[-3000:]  # 3: drift or an alert, said in the report
    if "data_windows" in expected:  # windows of the data's own time, logged beside the inputs
        by_data_time = run(folder, "mlops_monitor", "--out_dir", str(folder/"monitor_by_data_time"),
                           env={"MLOPS_MONITOR__WINDOW_TIME": settings.data.time_column, "MLOPS_MONITOR__WINDOW": expected["data_windows"][0]})
        assert by_data_time.returncode in (0, 3), by_data_time.stderr[-3000:]
    seconds = time.perf_counter() - started
    [ledger] = [json.loads(p.read_text()) for p in (folder/"runs").glob("*/run.json")]
    run_dir = Path(ledger["run_dir"])
    facts = {"init": init, "ledger": ledger, "predictions": sum(len(a["predictions"]) for a in answers), "feedback": given, "rows": raw.height, "seconds": seconds,
             "clean": json.loads((run_dir/"clean"/"clean.json").read_text()), "settings": settings, "expected": expected,
             "evaluate": json.loads((run_dir/"evaluate"/"evaluate.json").read_text()), "eda": json.loads((run_dir/"eda"/"eda.json").read_text()),
             "spec": champion.spec, "bad_date": (dates[0], bad.status_code, bad.text) if dates else None,
             "monitor": json.loads((folder/"monitor"/"monitor.json").read_text())}
    if "data_windows" in expected: facts["monitor_by_data_time"] = json.loads((folder/"monitor_by_data_time"/"monitor.json").read_text())
    return facts, (f"{name}: {raw.height:,} rows; {facts['clean']['summary']}; {facts['evaluate']['summary']}; "
                   f"{given} labels fed back; monitor {facts['monitor']['status']}; {seconds:.0f} s from mlops_init to the monitoring report")


@pytest.fixture(scope="module")
def attempts(request, tmp_path_factory):
    """The first attempt of each table this session's tests ask for, all started on first use, `AT_ONCE` at a time
    (the tables are independent: their own folders, stores and ports); each table's outcome, or its failure, as a future."""
    asked = {item.callspec.params["first_attempt"] for item in request.session.items
             if getattr(item, "module", None) is request.module and "first_attempt" in getattr(getattr(item, "callspec", None), "params", {})}
    folders = {name: tmp_path_factory.mktemp(name) for name in TABLES if name in asked}
    pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="first_attempt")
    try: yield {name: pool.submit(attempt, name, folder) for name, folder in folders.items()}  # in the order the tests ask for them
    finally: pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", params=list(TABLES))
def first_attempt(request, attempts):
    "One table from file to served model and monitoring report, each command once; what each left (a failure fails this table's tests only)."
    facts, summary = attempts[request.param].result()
    print(f"\n{summary}")
    return request.param, facts


@pytest.mark.slow
def test_init_writes_settings_that_run_as_written(first_attempt):
    name, f = first_attempt
    settings, expected = f["settings"], f["expected"]
    assert settings.data.time_column == expected["time_column"]
    assert "wrote mlops.toml" in f["init"].stdout
    assert len(f["clean"]["features"]) == expected["features"]
    assert not set(f["clean"]["features"]) & ({settings.data.target, settings.data.time_column} | set(settings.data.ignore_columns))
    if not settings.data.time_column: assert "at random" in f["clean"]["split_description"]


@pytest.mark.slow
def test_date_columns_are_features_sent_as_text(first_attempt):
    name, f = first_attempt
    if "dates" not in f["expected"]: pytest.skip(f"{name}: date features are checked on the table with date columns besides its time")
    parts = {"date": ["days", "month", "weekday"], "datetime": ["days", "month", "weekday", "hour"]}
    for column, family in f["expected"]["dates"].items():
        assert f["spec"].inputs[column] == family and f["eda"]["roles"][column] == "date feature"
        assert all(f"{column}_{p}" in f["spec"].features and f["eda"]["roles"][f"{column}_{p}"] == "derived feature" for p in parts[family])
    column, status, text = f["bad_date"]
    assert status == 400 and "row 0" in text and column in text, text


@pytest.mark.slow
def test_every_row_is_accounted_for(first_attempt):
    name, f = first_attempt
    clean = f["clean"]
    assert sum(clean["rows"].values()) + sum(clean["removed"].values()) == f["rows"]
    assert clean["removed"]["unlabelled"] == f["expected"].get("unlabelled", 0)
    assert all(clean["rows"][part] > 0 for part in ("train", "valid", "test"))


@pytest.mark.slow
def test_a_champion_is_served_and_monitored(first_attempt):
    name, f = first_attempt
    assert f["ledger"]["status"] == "ok" and f["ledger"]["promoted"]
    assert f["evaluate"]["metrics"]["roc_auc"] > 0.8  # these tables carry real signal
    assert f["predictions"] == f["rows"]
    monitor = f["monitor"]
    assert monitor["status"] == "ok" and monitor["window_rows"] == f["rows"]
    [window] = monitor["windows"]
    assert window["labelled"] == pytest.approx(f["feedback"]/f["rows"]) and window["roc_auc"] > 0.8


@pytest.mark.slow
def test_monitoring_windows_can_follow_the_data_time(first_attempt):
    name, f = first_attempt
    if "data_windows" not in f["expected"]: pytest.skip(f"{name}: windows by the data's time are checked on the tables with dates or years")
    report = f["monitor_by_data_time"]
    assert [w["window"] for w in report["windows"]] == f["expected"]["data_windows"][1]
    assert sum(w["rows"] for w in report["windows"]) == f["rows"]
