"""The live gate on a replayed month: a champion trained on the first half of 2013, a challenger in shadow
scoring the server's real requests for July, labels fed back, then the live check. A truly better
challenger is promoted and the server follows it; a worse one, judged the same way on August through
`mlops_schedule --once live_gate`, is refused and the champion stays."""
import json
import subprocess
import time

import httpx
import mlflow
import msgspec
import polars as pl
import pytest

from conftest import BIN, ServerProcess, clean_environ

pytestmark = pytest.mark.slow
KEEP = "dep_time IS NOT NULL AND arr_delay IS NOT NULL"
STUMPS = {"max_depth": {"type": "int", "low": 1, "high": 1}, "learning_rate": {"type": "float", "low": 0.05, "high": 0.05}}  # a weak model: three stumps


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    "Settings of a project of its own (trained on January to June), its settings file, and the flights of July and August."
    from mlops_nb.config import standalone_settings
    from mlops_nb.contract import infer_contract
    from mlops_nb.ingest import read_data
    from mlops_nb.records import write_json
    from mlops_nb.runs import save_settings
    settings = standalone_settings(data={"keep_rows": f"{KEEP} AND month < 7", "sample_every": 20},
                                   gate={"live_min_rows": 400, "max_slice_drop": 0.05, "min_roc_auc": 0.5}, evaluate={"slices": ["origin"], "min_slice_rows": 150},
                                   split={"valid_from": "2013-05-01", "test_from": "2013-06-01"}, serve={"poll_seconds": 0.5})
    year = read_data(msgspec.structs.replace(settings.data, keep_rows=KEEP, sample_every=1))
    write_json(settings.data.contract, infer_contract(year, settings.data.id_columns, source="the warehouse: flights of 2013"))  # as the replay does
    later = year.filter(pl.col("month").is_in([7, 8])).gather_every(12)
    return settings, save_settings(settings, tmp_path_factory.mktemp("live")/"settings.json"), later


def register(settings, mode:str="enforce", **tune) -> str:
    "Train and register a version with these tuning settings; its version."
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.runs import stage_run_dir
    trained = msgspec.structs.replace(settings, tune=msgspec.structs.replace(settings.tune, **tune),
                                      gate=msgspec.structs.replace(settings.gate, mode=mode))
    return train_and_register(trained, stage_run_dir(trained)).version


def replay_month(server:ServerProcess, rows:pl.DataFrame, inputs:list[str], target:str) -> int:
    "Serve the month's flights in requests of 100, send every true label; how many rows."
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for chunk in rows.iter_slices(100):
            answer = http.post("/predict", json={"rows": chunk.select(inputs).to_dicts()})
            assert answer.status_code == 200, answer.text
            for row, label in enumerate(chunk[target]):
                assert http.post("/feedback", json={"request_id": answer.json()["request_id"], "row": row, "label": int(label)}).status_code == 202
    return rows.height


def wait_for_shadow(settings, champion:str, challenger:str, rows:int):
    "Until every row the champion answered this month has the challenger's shadow answer and its label in the log."
    from mlops_nb.inference_log import labelled_shadow
    deadline = time.time() + 60
    while time.time() < deadline:
        found = labelled_shadow(settings.inference_log_url)
        if found.height and found.filter((pl.col("model_version") == champion) & (pl.col("shadow_version") == challenger)).height >= rows: return
        time.sleep(0.5)
    pytest.fail(f"the shadow answers of v{challenger} beside v{champion} did not all reach the log")


def wait_for_versions(server:ServerProcess, champion:str, shadow:str):
    deadline = time.time() + 60
    while time.time() < deadline:
        version = httpx.get(f"{server.url}/version").json()
        if (version["model_version"], version["shadow_version"]) == (champion, shadow): return
        time.sleep(0.2)
    pytest.fail(f"the server serves {version}, not v{champion} with v{shadow} in shadow")


def test_a_better_challenger_is_promoted_on_live_traffic_and_a_worse_one_refused(live):
    from mlops_nb.live import live_gate
    from mlops_nb.registry import champion_version, load_bundle
    from mlops_nb.runs import use_tracking
    settings, config, later = live
    weak = register(settings, n_trials=1, max_rounds=3, space=STUMPS)
    assert champion_version(settings) == weak
    strong = register(settings, mode="dry_run", n_trials=4, max_rounds=150)  # not promoted by the test rows: it must earn it live
    use_tracking(settings)
    client, name = mlflow.MlflowClient(), settings.model_name
    client.set_registered_model_alias(name, "challenger", strong)
    spec = load_bundle(settings, version=weak).spec
    server = ServerProcess(config)
    try:
        wait_for_versions(server, weak, strong)
        july = replay_month(server, later.filter(pl.col("month") == 7), list(spec.inputs), spec.target)
        wait_for_shadow(settings, weak, strong, july)
        decision = live_gate(settings)
        print(f"\nJuly: v{strong} {decision.challenger_roc_auc:.4f} against v{weak} {decision.champion_roc_auc:.4f} on {july} rows: {decision.reason}")
        assert decision.promoted and decision.champion_after == strong, decision
        checks = {c.check: c for c in decision.checks}
        assert checks["live_rows"].value >= july and checks["live_gain"].value > 0 and checks["max_slice_drop"].passed
        assert champion_version(settings) == strong and champion_version(settings, "challenger") is None
        assert client.get_model_version(name, strong).tags["live_promoted"] == "true"

        worse = register(settings, mode="dry_run", n_trials=1, max_rounds=3, space=STUMPS, seed=7)
        client.set_registered_model_alias(name, "challenger", worse)
        wait_for_versions(server, strong, worse)  # the server followed the promotion without a restart, and shadows the new challenger
        august = replay_month(server, later.filter(pl.col("month") == 8), list(spec.inputs), spec.target)
        wait_for_shadow(settings, strong, worse, august)
    finally: server.stop()
    job = subprocess.run([str(BIN/"mlops_schedule"), "--config", str(config), "--once", "live_gate"], env=clean_environ(),
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    record = json.loads(job.stdout.strip().splitlines()[-1])["live_gate"]
    print(f"August: v{worse} {record['challenger_roc_auc']:.4f} against v{strong} {record['champion_roc_auc']:.4f} on {august} rows: {record['reason']}")
    assert not record["promoted"] and record["challenger"] == worse and record["champion_after"] == strong, record
    assert "live_gain" in record["reason"], record["reason"]
    assert champion_version(settings) == strong and champion_version(settings, "challenger") == worse
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`mlops_nb.kind` = 'live_gate'")
    assert sorted(runs["tags.promoted"]) == ["false", "true"]
