"""Scale-out benchmark: tuning trials per minute with 1, 2 and 3 worker processes on one PostgreSQL study, and
training time in one process against Dask (2 workers x 1 thread) on generated flights of 2 and 10 million rows.

    .venv/bin/python bench/scale_bench.py                       # about 9 minutes on 2 cores, up to ~8 GB of RAM
    .venv/bin/python bench/scale_bench.py --sizes 200000 --window 20 --tune-train 50000 --tune-valid 20000   # a quick try

1. Data. For each size N, `mlops_nb.synthetic.generate_flights(N, seed=0)` joined and labelled as the ingest stage
   does (`join_sources`, `label_rows`), cleaned and split by time as the clean stage does
   (`usable_rows`, `split_rows`, `fit_transform` on the training months), written as `clean/train.parquet`,
   `clean/valid.parquet`, `clean/test.parquet` and `clean/transform.json` in a run folder.
2. Tuning throughput. A seeded sample of the smallest size's splits (`--tune-train`, `--tune-valid` rows) is the
   fixed data. For one process on all cores (the tune stage alone) and for 1, 2 and 3 workers with one XGBoost thread
   and a seed of their own each (as `mlops_tune_worker` runs them), that many processes each build the DMatrices, wait for a common start, then
   run the library's `run_study` (default search space, pruning, `study_storage` on a scratch PostgreSQL database,
   one study per measurement) until the parent stops them after `--window` seconds. Finished trials (complete or
   pruned) whose completion falls inside the window count.
3. Training. Fixed parameters, `--rounds` rounds, early stopping patience larger than the rounds: (a) one process,
   `to_dmatrix` then `train_booster`; (b) a `LocalCluster` of 2 worker processes x 1 thread and `train_on_dask`,
   which reads the Parquet splits on the workers. Each path runs in its own process; peak memory is Linux VmHWM of
   that process (and of each Dask worker).

Writes bench/results/scale.json with every figure, "ratio" = trials per minute with 2 workers / with 1 (workers as
`mlops_tune_worker` runs them: one XGBoost thread each), and a short
written estimate of how cost grows with workers and rows. The scratch database is dropped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
FIXED_PARAMS = {"max_depth": 6, "learning_rate": 0.1, "min_child_weight": 5.0, "subsample": 0.8, "colsample_bytree": 0.8,
                "reg_lambda": 1.0}


def _peak_mb() -> float:
    "This process's peak resident memory so far (Linux VmHWM: its own, not carried over from the parent), in MB."
    status = Path("/proc/self/status").read_text()
    return next(int(l.split()[1])/1024 for l in status.splitlines() if l.startswith("VmHWM:"))


def _settings():
    from mlops_nb.config import example_settings_file, load_settings
    return load_settings(example_settings_file(), environ={})


# ---- steps, each run in its own process by `_child` -------------------------------------------

def prepare(run_dir: str, rows: int) -> dict:
    "Generated flights through the ingest and clean stages' functions, left as the clean stage leaves them."
    from mlops_nb.synthetic import generate_flights
    from mlops_nb.ingest import join_sources, label_rows
    from mlops_nb.prepare import choose_features, fit_transform, split_rows, usable_rows
    from mlops_nb.records import write_json
    settings, out = _settings(), Path(run_dir)/"clean"
    d = settings.data
    start = time.perf_counter()
    tables = generate_flights(rows, seed=SEED)
    generated = time.perf_counter()
    df, _ = usable_rows(label_rows(join_sources(tables, d), d), d)
    del tables
    parts, _ = split_rows(df, settings.split, d)
    del df
    spec = fit_transform(parts["train"], *choose_features(parts["train"], d, settings.features), settings.features, d.target)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items(): part.write_parquet(out/f"{name}.parquet")
    write_json(out/"transform.json", spec)
    return {"rows_generated": rows, "rows": {k: v.height for k, v in parts.items()}, "features": len(spec.features),
            "generate_seconds": generated - start, "clean_and_write_seconds": time.perf_counter() - generated,
            "train_parquet_mb": (out/"train.parquet").stat().st_size/2**20}


def tuning_sample(run_dir: str, tune_dir: str, train_rows: int, valid_rows: int) -> dict:
    "A seeded sample of a run's training and validation splits: the fixed data of the tuning measurements."
    import polars as pl
    src, out = Path(run_dir)/"clean", Path(tune_dir)/"clean"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train_rows), ("valid", valid_rows)):
        df = pl.read_parquet(src/f"{name}.parquet")
        df.sample(min(n, df.height), seed=SEED).write_parquet(out/f"{name}.parquet")
    shutil.copy(src/"transform.json", out/"transform.json")
    return {"rows_train": pl.scan_parquet(out/"train.parquet").select(pl.len()).collect().item(),
            "rows_valid": pl.scan_parquet(out/"valid.parquet").select(pl.len()).collect().item()}


def _training_settings(rounds: int):
    "The default tune settings with a fixed number of rounds and early stopping that never stops early."
    import msgspec
    return msgspec.structs.replace(_settings().tune, max_rounds=rounds, early_stopping_rounds=rounds + 1000)


def _fit_figures(fit: dict) -> dict:
    auc = fit["curve"]["valid"]["auc"]
    return {"rounds_trained": len(auc), "valid_auc_last_round": auc[-1], "valid_auc_best": fit["valid_auc"],
            "best_iteration": fit["best_iteration"]}


def train_single(run_dir: str, rounds: int) -> dict:
    "One process: read the splits, build the DMatrices (transformation included), train with `train_booster`."
    from mlops_nb.clean import load_split, load_transform
    from mlops_nb.tune import to_dmatrix, train_booster
    import xgboost as xgb
    tune, spec = _training_settings(rounds), load_transform(run_dir)
    t0 = time.perf_counter()
    train, valid = load_split(run_dir, "train"), load_split(run_dir, "valid")
    t1 = time.perf_counter()
    dtrain, dvalid = to_dmatrix(train, spec), to_dmatrix(valid, spec)
    t2 = time.perf_counter()
    del train, valid
    memory_before_training = _peak_mb()
    _, fit = train_booster(FIXED_PARAMS, dtrain, dvalid, tune)
    t3 = time.perf_counter()
    return {"rows_train": dtrain.num_row(), "rows_valid": dvalid.num_row(), "features": dtrain.num_col(),
            "read_seconds": t1 - t0, "dmatrix_seconds": t2 - t1, "train_seconds": t3 - t2, "total_seconds": t3 - t0,
            "peak_mb_before_training": memory_before_training, "threads": xgb.config.get_config().get("nthread") or os.cpu_count(),
            **_fit_figures(fit)}


def _worker_peak_mb() -> float:
    return _peak_mb()


def train_dask(run_dir: str, rounds: int, workers: int = 2) -> dict:
    "A LocalCluster of `workers` processes x 1 thread, then `train_on_dask` (the workers read and transform the Parquet splits)."
    import msgspec
    import dask.dataframe as dd
    from distributed import Client, LocalCluster
    from mlops_nb.clean import load_transform
    from mlops_nb.tune import train_on_dask
    spec = load_transform(run_dir)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    t1 = time.perf_counter()
    try:
        tune = msgspec.structs.replace(_training_settings(rounds), dask_scheduler=cluster.scheduler_address)
        _, fit = train_on_dask(FIXED_PARAMS, Path(run_dir), spec, tune)
        t2 = time.perf_counter()
        with Client(cluster) as client:
            peaks = client.run(_worker_peak_mb)
    finally:
        cluster.close()
    partitions = {s: dd.read_parquet(str(Path(run_dir)/"clean"/f"{s}.parquet"), split_row_groups=True).npartitions for s in ("train", "valid")}
    return {"workers": workers, "threads_per_worker": 1, "cluster_start_seconds": t1 - t0, "train_on_dask_seconds": t2 - t1,
            "total_seconds": t2 - t0, "parquet_partitions": partitions, "worker_peak_mb": sorted(peaks.values()),
            "peak_mb_all_workers": sum(peaks.values()), **_fit_figures(fit)}


def tune_worker(tune_dir: str, url: str, study: str, go: str, ready: str, threads: int = 0, own_seed: bool = False) -> None:
    """One tuning worker: build the DMatrices, say so, wait for the common start, run `run_study` until stopped.
    `threads` and `own_seed` as `mlops_tune_worker` sets them (one XGBoost thread, a seed of its own), or the tune stage's defaults."""
    import msgspec
    from mlops_nb.clean import load_split, load_transform
    from mlops_nb.tune import run_study, study_storage, to_dmatrix
    spec = load_transform(tune_dir)
    dtrain, dvalid = (to_dmatrix(load_split(tune_dir, s), spec) for s in ("train", "valid"))
    tune = msgspec.structs.replace(_settings().tune, storage=url, n_trials=1_000_000, threads=threads)
    Path(ready).touch()
    while not Path(go).exists(): time.sleep(0.02)
    def stop(*_): raise KeyboardInterrupt  # the running trial is marked failed, and run_study returns by raising
    signal.signal(signal.SIGTERM, stop)
    seed = int.from_bytes(os.urandom(4), "big") if own_seed else None
    try: run_study(dtrain, dvalid, tune, study_storage(tune, Path(tune_dir)), study_name=study, track=False, seed=seed)
    except KeyboardInterrupt: pass


STEPS = {"prepare": prepare, "tuning_sample": tuning_sample, "single": train_single, "dask": train_dask}


def _child(step: str, args: dict) -> None:
    "Run one step in this (fresh) process and print its figures, with the process's peak memory, as JSON."
    result = STEPS[step](**args)
    result["peak_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result), flush=True)


def _run(step: str, log: Path, **args) -> dict:
    "Run `step` in a new Python process; its figures and its wall time (imports included)."
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", step, "--args", json.dumps(args)],
                          capture_output=True, text=True, cwd=HERE.parent)
    log.write_text(proc.stderr)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"step {step} failed with exit code {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):]) | {"process_seconds": time.perf_counter() - start}


# ---- tuning throughput -------------------------------------------------------------------------

def scratch_database(drop: str = "") -> str:
    "Create (or, with `drop`, drop) a scratch PostgreSQL database; its name."
    import psycopg
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        if drop: conn.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)'); return drop
        name = f"scale_bench_{os.getpid()}"
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
        return name


def measure_tuning(tune_dir: Path, url: str, label: str, window: float) -> dict:
    """Start the workers `label` names on one new study, let them run for `window` seconds, count the trials finished in it.

    `label` is a worker count ("1": the tune stage's own process, XGBoost's default threads, all cores, the configured
    seed) or workers x threads ("2x1": workers as `mlops_tune_worker` runs them, that many XGBoost threads and a seed
    of its own each)."""
    import optuna
    workers, _, threads = label.partition("x")
    workers = int(workers)
    study = f"scale-{label}-workers"
    optuna.create_study(study_name=study, storage=url, direction="maximize")  # the schema and the study exist before the race
    go = tune_dir/f"go-{label}"
    procs, readies = [], []
    for i in range(workers):
        readies.append(tune_dir/f"ready-{label}-{i}")
        args = {"tune_dir": str(tune_dir), "url": url, "study": study, "go": str(go), "ready": str(readies[-1]),
                "threads": int(threads or 0), "own_seed": bool(threads)}
        err = open(tune_dir/f"worker-{label}-{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, __file__, "--tune-worker", json.dumps(args)], stdout=err, stderr=err,
                                      cwd=HERE.parent))
    while not all(r.exists() for r in readies):
        if any(p.poll() is not None for p in procs): raise RuntimeError(f"a tuning worker died: see {tune_dir}/worker-*.log")
        time.sleep(0.05)
    start = datetime.now()  # optuna stores naive local times
    go.touch()
    time.sleep(window)
    end = datetime.now()
    for p in procs: p.send_signal(signal.SIGTERM)
    for p in procs:
        try: p.wait(timeout=30)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
    return count_trials(optuna.load_study(study_name=study, storage=url), start, end) | {
        "workers": workers, "threads_per_worker": int(threads) if threads else "default (all cores)", "study": study, "window_seconds": (end - start).total_seconds()}


def count_trials(study, start: datetime, end: datetime) -> dict:
    "Finished trials in [start, end]: per minute, per worker, by state; and trials whose parameters repeat another's."
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete and start <= t.datetime_complete <= end]
    minutes = (end - start).total_seconds()/60
    per_worker: dict[str, int] = {}
    for t in done: per_worker[t.user_attrs.get("worker", "?")] = per_worker.get(t.user_attrs.get("worker", "?"), 0) + 1
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    seen, repeats = set(), 0
    for t in sorted(done, key=lambda t: t.number):
        key = tuple(sorted(t.params.items()))
        repeats += key in seen
        seen.add(key)
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {"finished_in_window": len(done), "trials_per_minute": len(done)/minutes,
            "complete_in_window": sum(t.state.name == "COMPLETE" for t in done), "pruned_in_window": sum(t.state.name == "PRUNED" for t in done),
            "trials_per_worker": sorted(per_worker.values(), reverse=True), "states_all_trials": states,
            "mean_trial_seconds": sum(seconds)/len(seconds) if seconds else None,
            "best_valid_auc": max((t.value for t in done if t.state.name == "COMPLETE"), default=None),
            "trials_repeating_earlier_params": repeats}


# ---- report -----------------------------------------------------------------------------------

def _machine() -> dict:
    import dask, distributed, optuna, polars, xgboost
    memory = next(int(l.split()[1])//1024 for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory_mb": memory, "platform": platform.platform(), "python": platform.python_version(),
            "xgboost": xgboost.__version__, "optuna": optuna.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "polars": polars.__version__}


def _rounded(d):
    if isinstance(d, dict): return {k: _rounded(v) for k, v in d.items()}
    if isinstance(d, list): return [_rounded(v) for v in d]
    if isinstance(d, float): return round(d, 4)
    return d


def estimate(tuning: dict, training: dict) -> str:
    "A few sentences on how cost grows with workers and rows, from the measured figures."
    rate = {w: t["trials_per_minute"] for w, t in tuning.items()}
    trial = {w: t["mean_trial_seconds"] or float("nan") for w, t in tuning.items()}
    sizes = sorted(training, key=int)
    lo, hi = training[sizes[0]]["single"], training[sizes[-1]]["single"]
    per_million = lambda key: (hi[key] - lo[key])/(hi["rows_train"] - lo["rows_train"])*1e6
    big = training[sizes[-1]]
    return (f"Tuning: one process with XGBoost on both cores (the tune stage alone) made {rate['1']:.1f} trials/min. Workers as "
            f"mlops_tune_worker runs them (one XGBoost thread and a sampler seed of their own each): {rate['1x1']:.1f} with 1, "
            f"{rate['2x1']:.1f} with 2 ({rate['2x1']/rate['1x1']:.2f}x), {rate.get('3x1', float('nan')):.1f} with 3 on these 2 cores "
            f"(mean trial {trial['1x1']:.2f} s, {trial['2x1']:.2f} s, {trial.get('3x1', float('nan')):.2f} s); this machine's speed "
            f"varies by about 30% from minute to minute, so smaller differences are noise. On one machine throughput is bounded "
            f"by its cores, and one process using every core does about as well as a worker per core. Trials are independent and the PostgreSQL study is the only shared state, so with one "
            f"worker per core trials per minute should grow about linearly with machines, at about {rate['2x1']:.0f} per 2-core "
            f"machine on this data, until the database or TPE's sampling (it reads every finished trial) becomes the limit. "
            f"Training in one process: {per_million('train_seconds'):.1f} s of training and {per_million('dmatrix_seconds'):.1f} s "
            f"of DMatrix building per million training rows for {hi['rounds_trained']} rounds, and about "
            f"{per_million('peak_mb'):,.0f} MB of peak memory per million rows: cost grows linearly with rows "
            f"({lo['rows_train']:,} rows: {lo['train_seconds']:.1f} s; {hi['rows_train']:,}: {hi['train_seconds']:.1f} s). "
            f"Dask on the same 2 cores took {big['dask']['total_seconds']:.1f} s (cluster start included) against "
            f"{big['single']['total_seconds']:.1f} s for read + DMatrix + training in one process: it buys no speed on one "
            f"machine. What it can buy is memory per machine: each worker holds only its partitions, so a table larger "
            f"than one machine's memory can be trained on several. Here the peaks were "
            f"{', '.join(f'{m:,.0f}' for m in big['dask']['worker_peak_mb'])} MB per worker against "
            f"{big['single']['peak_mb']:,.0f} MB for the single process, with the splits read as "
            f"{big['dask']['parquet_partitions']} partitions"
            + (": one partition per split puts all the data on one worker, which then trains with one thread while the "
               "other idles (likely most of the slower time), so the clean stage would have to write several files (or "
               "dask_matrix split row groups) for the work and the memory to spread." if
               max(big['dask']['parquet_partitions'].values()) == 1 else "."))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000000,10000000", help="generated flights per training measurement, comma-separated")
    p.add_argument("--rounds", type=int, default=50, help="boosting rounds of the training measurements")
    p.add_argument("--workers", default="1,1x1,2x1,3x1", help="tuning workers: 1 (the tune stage's process), or workers x XGBoost threads each")
    p.add_argument("--window", type=float, default=60, help="seconds each tuning measurement runs")
    p.add_argument("--tune-train", type=int, default=200_000, help="training rows of the tuning data")
    p.add_argument("--tune-valid", type=int, default=50_000, help="validation rows of the tuning data")
    p.add_argument("--out", default=str(HERE/"results"/"scale.json"))
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--tune-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child: return _child(a.child, json.loads(a.args))
    if a.tune_worker: return tune_worker(**json.loads(a.tune_worker))

    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="scale_bench_"))
    database = scratch_database()
    url = f"{PG}/{database}"
    started = time.perf_counter()
    prepared, training, tuning = {}, {}, {}
    try:
        print(f"work folder {work}; scratch database {database}", flush=True)
        for i, n in enumerate(sizes):
            run_dir = work/f"run-{n}"
            prepared[str(n)] = r = _run("prepare", work/f"prepare-{n}.log", run_dir=str(run_dir), rows=n)
            print(f"{n:,} flights: train {r['rows']['train']:,}, valid {r['rows']['valid']:,} rows; generated in "
                  f"{r['generate_seconds']:.1f} s, cleaned and written in {r['clean_and_write_seconds']:.1f} s, peak {r['peak_mb']:,.0f} MB", flush=True)
            if i == 0:
                tune_dir = work/"tuning"
                sample = _run("tuning_sample", work/"sample.log", run_dir=str(run_dir), tune_dir=str(tune_dir),
                              train_rows=a.tune_train, valid_rows=a.tune_valid)
                for w in a.workers.split(","):
                    tuning[w] = t = measure_tuning(tune_dir, url, w, a.window)
                    print(f"tuning, {w} worker(s): {t['finished_in_window']} trials in {t['window_seconds']:.0f} s = "
                          f"{t['trials_per_minute']:.1f}/min ({t['complete_in_window']} complete, {t['pruned_in_window']} pruned; "
                          f"per worker {t['trials_per_worker']}; {t['trials_repeating_earlier_params']} repeat earlier parameters)", flush=True)
            single = _run("single", work/f"single-{n}.log", run_dir=str(run_dir), rounds=a.rounds)
            print(f"  single process: read {single['read_seconds']:.1f} s, DMatrix {single['dmatrix_seconds']:.1f} s, "
                  f"train {single['train_seconds']:.1f} s, peak {single['peak_mb']:,.0f} MB, valid AUC {single['valid_auc_last_round']:.4f}", flush=True)
            dask = _run("dask", work/f"dask-{n}.log", run_dir=str(run_dir), rounds=a.rounds)
            print(f"  dask 2x1: cluster {dask['cluster_start_seconds']:.1f} s, train_on_dask {dask['train_on_dask_seconds']:.1f} s, "
                  f"worker peaks {[round(m) for m in dask['worker_peak_mb']]} MB, valid AUC {dask['valid_auc_last_round']:.4f}, "
                  f"partitions {dask['parquet_partitions']}", flush=True)
            training[str(n)] = {"single": single, "dask": dask,
                                "dask_over_single_total": dask["total_seconds"]/single["total_seconds"],
                                "dask_over_single_training": dask["train_on_dask_seconds"]/(single["read_seconds"] + single["dmatrix_seconds"] + single["train_seconds"]),
                                "auc_difference": dask["valid_auc_last_round"] - single["valid_auc_last_round"]}
            shutil.rmtree(run_dir, ignore_errors=True) if not a.keep else None
    finally:
        scratch_database(drop=database)
        if a.keep: print(f"kept {work}")
        else: shutil.rmtree(work, ignore_errors=True)

    report = {"benchmark": "scale-out: tuning trials per minute by worker processes; training one process vs Dask by rows",
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ("bench/scale_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "machine": _machine(), "seed": SEED, "seconds": time.perf_counter() - started,
              "tuning_setup": {"storage": "PostgreSQL 15 (scratch database, postgresql+psycopg), study_storage with heartbeats",
                               "code": "mlops_nb.tune.run_study, default search space, pruning, TPE seed 42, track=False",
                               "window_seconds": a.window, **sample},
              "tuning": tuning,
              "training_setup": {"params": FIXED_PARAMS, "rounds": a.rounds, "early_stopping_rounds": a.rounds + 1000,
                                 "single": "to_dmatrix + train_booster in one process (XGBoost's default threads: all cores)",
                                 "dask": "LocalCluster(2 processes x 1 thread) + train_on_dask (workers read clean/*.parquet)"},
              "prepare": prepared, "training": training,
              "ratio": tuning["2x1"]["trials_per_minute"]/tuning["1x1"]["trials_per_minute"],
              "ratio_3_over_1": tuning["3x1"]["trials_per_minute"]/tuning["1x1"]["trials_per_minute"] if "3x1" in tuning else None,
              "ratio_2_workers_over_one_process": tuning["2x1"]["trials_per_minute"]/tuning["1"]["trials_per_minute"]}
    report["estimate"] = estimate(tuning, training)
    report = _rounded(report)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    big = training[str(sizes[-1])]
    rates = ", ".join(f"{w} worker(s) {t['trials_per_minute']:.1f}" for w, t in tuning.items())
    print(f"trials/min {rates}; ratio {report['ratio']:.2f}; "
          f"{sizes[-1]:,} flights: single {big['single']['total_seconds']:.1f} s, dask {big['dask']['total_seconds']:.1f} s; wrote {out}")
    return report


if __name__ == "__main__":
    main()
