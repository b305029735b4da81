"""The promotion gate and the registry as whole flows, on one small champion made in this process:
a second evaluation that does not beat it, the labelled production window, a dry run, enforcement and
rollback, a behavioural case that registers nothing, a tampered model file, a rebuild from the records;
and the monitor's control, rows from the training months, against months the model never saw."""
import json
import re
from pathlib import Path

import mlflow
import msgspec
import numpy as np
import polars as pl
import pytest

from mlops_nb.config import standalone_settings
from mlops_nb.runs import stage_run_dir, use_tracking
from mlops_nb.pipeline import train_and_register
from mlops_nb.registry import ModelIntegrityError, champion_version, load_bundle, rollback
from mlops_nb.clean import load_split
from mlops_nb.evaluate import BehaviourError, evaluate_stage, gate_checks, reproduce
from mlops_nb.inference_log import InferenceLog
from mlops_nb.ingest import read_snapshot
from mlops_nb.monitor import monitor_report
from mlops_nb.serve import app_client, create_app


@pytest.fixture(scope="module")
def evaluated():
    "A registry with one champion, its run folder and its evaluation; the champion is restored after each test that moves it."
    settings = standalone_settings(monitor={"window_columns": ["year", "month"], "min_labelled": 20})
    run_dir = stage_run_dir(settings)
    evaluation = train_and_register(settings, run_dir)
    assert evaluation.decision.promoted and champion_version(settings) == evaluation.version
    return settings, run_dir, evaluation


def _versions(settings) -> int:
    use_tracking(settings)
    return len(mlflow.MlflowClient().search_model_versions(f"name = '{settings.model_name}'"))


def test_a_second_evaluation_of_the_same_model_is_not_promoted(evaluated):
    settings, run_dir, first = evaluated
    again = evaluate_stage(settings, run_dir)
    assert not again.decision.promoted and "<=" in again.decision.reason
    assert champion_version(settings) == first.version
    assert champion_version(settings, "challenger") == again.version
    assert {c.check for c in again.decision.checks} == {"min_roc_auc", "latency_ms", "gain", "max_slice_drop"}


def test_the_gate_compares_both_models_on_labelled_production_rows(evaluated):
    "Once served rows have their true labels, the gate adds the window check: the same model shows no drop."
    settings, run_dir, first = evaluated
    champion, test = load_bundle(settings, alias="champion"), load_split(run_dir, "test")
    served_log = InferenceLog(settings.inference_log_url)
    for i, chunk in enumerate(test.iter_slices(500)):
        proba = champion.predict_proba(chunk)
        served_log.append(f"req{i}", champion.version, chunk.select(list(champion.spec.inputs)), proba, (proba >= champion.threshold).astype(int))
        for row, label in enumerate(chunk[settings.data.target].to_list()): served_log.add_feedback(f"req{i}", row, int(label))
    served_log.close()
    checks = gate_checks(settings, champion, test, first.metrics["roc_auc"], champion)
    [window] = [c for c in checks if c.check == "window_drop"]
    assert window.window_rows == min(test.height, settings.gate.window_rows)
    assert abs(window.value) < 1e-9 and window.passed


def test_dry_run_moves_nothing_enforcing_promotes_and_rollback_restores(evaluated):
    settings, run_dir, _ = evaluated
    champion = champion_version(settings)
    lenient = msgspec.structs.replace(settings, gate=msgspec.structs.replace(settings.gate, min_gain=-1.0))
    dry = evaluate_stage(msgspec.structs.replace(lenient, gate=msgspec.structs.replace(lenient.gate, mode="dry_run")), run_dir)
    assert dry.decision.passed and not dry.decision.promoted
    assert champion_version(settings) == champion
    enforced = evaluate_stage(lenient, run_dir)
    assert enforced.decision.promoted
    assert (champion_version(settings), champion_version(settings, "previous_champion")) == (enforced.version, champion)
    assert rollback(settings) == {"champion_before": enforced.version, "champion_after": champion}
    assert champion_version(settings, "previous_champion") == enforced.version


def test_a_broken_behaviour_case_fails_the_stage_and_registers_nothing(evaluated):
    "Asking for late flights to be less likely late at later hours: the run stops before registering."
    settings, run_dir, _ = evaluated
    versions, champion = _versions(settings), champion_version(settings)
    backwards = [{"check": "direction", "feature": "hour", "values": [6, 12, 18], "direction": "decreasing"}]
    contrary = msgspec.structs.replace(settings, evaluate=msgspec.structs.replace(settings.evaluate, behaviour=backwards))
    with pytest.raises(BehaviourError, match="direction of hour broken"): evaluate_stage(contrary, run_dir)
    assert _versions(settings) == versions and champion_version(settings) == champion


def _tamper_model_ubj(path: Path): path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
def _tamper_mlmodel(path: Path): path.write_text(re.sub(r"threshold: [0-9.e-]+", "threshold: 0.0001", path.read_text()))
def _tamper_transform(path: Path):  # a fill value changed: the model would see other features
    doc = json.loads(path.read_text())
    policy = next(iter(doc["numeric"].values()))
    policy["fill"] = 1e9
    path.write_text(json.dumps(doc))
def _tamper_contract(path: Path):  # a range widened: the server would let through what training never saw
    doc = json.loads(path.read_text())
    rule = next(r for r in doc["columns"].values() if r.get("max") is not None)
    rule["max"] = 1e300
    path.write_text(json.dumps(doc))

@pytest.mark.parametrize("name, tamper", [("model.ubj", _tamper_model_ubj), ("MLmodel", _tamper_mlmodel),
                                          ("extra_files/feature_transform.json", _tamper_transform),
                                          ("extra_files/data_contract.json", _tamper_contract)])
def test_every_file_the_server_reads_is_checked_against_the_manifest(evaluated, name, tamper):
    "A changed booster, threshold, transformation or contract in the artifact store: the load and the server refuse it, naming the file."
    settings, _, _ = evaluated
    champion = champion_version(settings)
    registered = mlflow.MlflowClient().get_model_version(settings.model_name, champion)
    model_id = registered.source.rstrip("/").split("/")[-1]  # models:/<model id>
    [folder] = {p.parent for p in Path(settings.state_dir, "artifacts").rglob("MLmodel") if model_id in p.parts}
    stored = folder/name
    original = stored.read_bytes()
    tamper(stored)
    assert stored.read_bytes() != original
    try:
        with pytest.raises(ModelIntegrityError, match=f"{re.escape(name)} has SHA-256 .* does not match"): load_bundle(settings, alias="champion")
        with app_client(create_app(settings)) as app:
            ready = app.get("/ready")
            assert ready.status_code == 503 and name in ready.json()["reason"] and "integrity" in ready.json()["reason"], ready.text
            assert app.get("/health").status_code == 200
    finally: stored.write_bytes(original)
    assert load_bundle(settings, alias="champion").version == champion


def test_the_champion_rebuilt_from_its_records_predicts_the_same(evaluated):
    settings, _, _ = evaluated
    rebuilt = reproduce(settings, champion_version(settings))
    assert rebuilt["matches"] and rebuilt["transform_equal"] and rebuilt["max_abs_difference"] <= 1e-9, rebuilt


def _serve(settings, rows:pl.DataFrame, inputs:list[str]) -> None:
    with app_client(create_app(settings)) as client:
        for chunk in rows.select(inputs).iter_slices(200): assert client.post("/predict", json={"rows": chunk.to_dicts()}).status_code == 200


def test_months_the_model_never_saw_drift_and_the_training_months_do_not(evaluated, tmp_path):
    "The monitor's control: the same champion served winter flights, then (into another log) flights of its training months."
    settings, _, _ = evaluated
    champion = load_bundle(settings, alias="champion")
    snapshot = read_snapshot({"path": settings.snapshots_dir/f"{champion.data_digest}.parquet"})
    winter = msgspec.structs.replace(settings, inference_log=str(tmp_path/"winter.db"))
    spring = msgspec.structs.replace(settings, inference_log=str(tmp_path/"spring.db"),  # one window over the served months, as the control
                                     monitor=msgspec.structs.replace(settings.monitor, window_columns=[]))
    _serve(winter, snapshot.filter(pl.col("month") >= 11), list(champion.spec.inputs))
    _serve(spring, snapshot.filter(pl.col("month") <= 8), list(champion.spec.inputs))
    drifted, calm = monitor_report(winter, tmp_path/"winter"), monitor_report(spring, tmp_path/"spring")
    assert drifted["drift_detected"] and "month" in drifted["drifted_features"]
    assert "month" not in calm["drifted_features"] and calm["prediction_psi"] < drifted["prediction_psi"]
    assert np.isfinite(calm["prediction_psi"])
