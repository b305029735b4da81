"""Several tuning processes share one Optuna study through its journal file: every trial ends complete or
pruned, none is lost or left running, and the study stops at its budget."""
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import optuna
import pytest

from conftest import postgres_url
from mlops_nb.tune import FINISHED, journal_storage

WORKER = textwrap.dedent("""
    import sys
    import numpy as np, xgboost as xgb
    from mlops_nb.config import TuneSettings
    from mlops_nb.tune import journal_storage, run_study
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6)); y = (X[:, 0] + X[:, 1]*X[:, 2] + rng.normal(size=3000) > 0).astype(int)
    dtrain, dvalid = xgb.DMatrix(X[:2000], label=y[:2000]), xgb.DMatrix(X[2000:], label=y[2000:])
    tune = TuneSettings(n_trials=int(sys.argv[2]), max_rounds=80, early_stopping_rounds=10, seed=int(sys.argv[3]))
    run_study(dtrain, dvalid, tune, journal_storage(sys.argv[1]), study_name="shared", track=False)
""")


def test_two_workers_share_one_study(tmp_path):
    journal, n_trials = tmp_path/"study.log", 16
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(journal), str(n_trials), str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=journal_storage(journal))
    states = [t.state for t in study.trials]
    assert all(s in FINISHED for s in states), states
    # each worker stops once the shared budget is reached; one may finish the trial it had started
    assert n_trials <= len(states) <= n_trials + 1
    assert {t.number for t in study.trials} == set(range(len(states)))
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1  # successive halving may stop all but a few


SLOW_WORKER = WORKER.replace("max_rounds=80, early_stopping_rounds=10", "max_rounds=100000, early_stopping_rounds=100000")


def test_killed_worker_leaves_no_trial_running(tmp_path):
    journal = tmp_path/"study.log"
    victim = subprocess.Popen([sys.executable, "-c", SLOW_WORKER, str(journal), "50", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # wait, at most 60 s, until the victim is inside a trial
            time.sleep(0.1)
            if journal.exists():
                study = optuna.load_study(study_name="shared", storage=journal_storage(journal))
                if any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials): break
        else: raise AssertionError("the worker never started a trial")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    survivor = subprocess.run([sys.executable, "-c", WORKER, str(journal), "3", "2"], capture_output=True, text=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    study = optuna.load_study(study_name="shared", storage=journal_storage(journal))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) >= 1


def test_study_in_postgresql_when_configured():
    "tune.storage takes a database URL: the same study code runs against PostgreSQL."
    url = postgres_url("postgresql+psycopg")
    name = f"shared_{uuid.uuid4().hex[:8]}"
    worker = subprocess.run([sys.executable, "-c", WORKER.replace('journal_storage(sys.argv[1])', 'sys.argv[1]').replace('study_name="shared"', f'study_name="{name}"'),
                             url, "4", "1"], capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-2000:]
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 4 and all(t.state in FINISHED for t in study.trials)
    optuna.delete_study(study_name=name, storage=url)


@pytest.mark.slow
def test_three_workers_join_a_runs_study_and_its_best_is_registered_once(tmp_path):
    "`mlops_tune_worker`s wait for a run's clean stage, share its study in PostgreSQL, and the run registers the best trial, once."
    import mlflow
    from pathlib import Path
    from mlops_nb.clean import clean_stage
    from mlops_nb.config import standalone_settings
    from mlops_nb.runs import save_settings, stage_run_dir, use_tracking
    from mlops_nb.evaluate import evaluate_stage
    from mlops_nb.ingest import ingest_stage
    from mlops_nb.tune import study_name, tune_stage
    url = postgres_url("postgresql+psycopg")
    settings = standalone_settings(tune={"n_trials": 12, "max_rounds": 150, "early_stopping_rounds": 10, "storage": url, "heartbeat_seconds": 5},
                                   model_name=f"workers_{uuid.uuid4().hex[:8]}")
    run_dir = stage_run_dir(settings)
    save_settings(settings, run_dir/"settings.json")
    bin_dir = Path(sys.executable).parent
    workers = [subprocess.Popen([str(bin_dir/"mlops_tune_worker"), str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    ingest_stage(settings, run_dir); clean_stage(settings, run_dir)  # the workers start once the splits are there
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    study = optuna.load_study(study_name=study_name(settings, run_dir), storage=url)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and all(s in FINISHED for s in states)  # every trial accounted for
    assert len([s for s in states if s in FINISHED]) >= 12
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2, [out for out, _ in outputs]
    tuned = tune_stage(settings, run_dir)  # the budget is spent: no new trial, the best of the workers' is trained
    assert tuned["params"] == study.best_params and tuned["trials"] == len(study.trials)
    evaluate_stage(settings, run_dir)
    use_tracking(settings)
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{settings.model_name}'")] == ["1"]
    optuna.delete_study(study_name=study.study_name, storage=url)


@pytest.mark.slow
def test_training_on_a_dask_cluster_matches_one_process():
    "With tune.dask_scheduler, the tune stage trains the chosen model on Dask workers that read the Parquet splits: the same quality."
    import msgspec
    from distributed import LocalCluster
    from sklearn.metrics import roc_auc_score
    from mlops_nb.clean import clean_stage, load_split, load_transform
    from mlops_nb.config import standalone_settings
    from mlops_nb.runs import stage_run_dir
    from mlops_nb.ingest import ingest_stage
    from mlops_nb.tune import load_tuned, to_dmatrix, train_booster, tune_stage
    settings = standalone_settings(data={"sample_every": 10})
    run_dir = stage_run_dir(settings)
    ingest_stage(settings, run_dir); clean_stage(settings, run_dir)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = msgspec.structs.replace(settings, tune=msgspec.structs.replace(settings.tune, dask_scheduler=cluster.scheduler_address))
        tuned = tune_stage(on_dask, run_dir)
    distributed_model, _ = load_tuned(run_dir)
    spec = load_transform(run_dir)
    alone, _ = train_booster(tuned["params"], *(to_dmatrix(load_split(run_dir, s), spec) for s in ("train", "valid")), settings.tune)
    test = to_dmatrix(load_split(run_dir, "test"), spec)
    aucs = [roc_auc_score(test.get_label(), model.predict(test)) for model in (distributed_model, alone)]
    print("test ROC AUC on Dask, in one process:", aucs)
    assert abs(aucs[0] - aucs[1]) < 0.005, aucs
    assert aucs[0] > 0.6


@pytest.mark.slow
def test_heartbeat_fails_the_trial_of_a_worker_killed_on_another_machine():
    "With a database storage, a trial whose worker stopped beating is marked failed by the next worker, wherever the dead one ran."
    from mlops_nb.config import TuneSettings
    from mlops_nb.tune import study_storage
    url = postgres_url("postgresql+psycopg")
    name = f"beating_{uuid.uuid4().hex[:8]}"
    script = (WORKER.replace("from mlops_nb.tune import journal_storage, run_study", "from mlops_nb.tune import run_study, study_storage")
                    .replace("max_rounds=80", "max_rounds=int(sys.argv[4])")
                    .replace("journal_storage(sys.argv[1])", "study_storage(TuneSettings(storage=sys.argv[1], heartbeat_seconds=1), None)")
                    .replace('study_name="shared"', f'study_name="{name}"'))
    storage = study_storage(TuneSettings(storage=url, heartbeat_seconds=1), None)
    def killed_in_a_trial() -> list:
        "Start a worker, kill it once a trial of its is training: the trials it left running."
        first = subprocess.Popen([sys.executable, "-c", script, url, "50", "1", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try: running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
                except KeyError: running = []
                if running and running[0].intermediate_values: break  # training, so its heartbeat has begun
                time.sleep(0.2)
            else: pytest.fail("the first worker never got into a trial")
        finally: first.kill(); first.wait()
        return optuna.load_study(study_name=name, storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    for _ in range(5):  # the kill can land between a pruned trial and the next one: then no trial is left running, and it is tried again
        left_running = killed_in_a_trial()
        if left_running: break
    [orphan] = left_running
    storage.set_trial_user_attr(orphan._trial_id, "worker", "another-machine:1")  # its process cannot be looked up from here
    time.sleep(4)  # longer than the grace period: three missed heartbeats
    done = len(optuna.load_study(study_name=name, storage=storage).get_trials(states=FINISHED))
    second = subprocess.run([sys.executable, "-c", script, url, str(done + 1), "2", "60"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    optuna.delete_study(study_name=name, storage=storage)
