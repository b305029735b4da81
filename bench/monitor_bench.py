"""Drift benchmark: this project's `drift_table` against Evidently's data drift report, on the same frames, in one run.

    .venv/bin/python bench/monitor_bench.py [--current 1000000] [--reference 200000] [--repeat 3] [--profile]

About 90 s on 2 cores, nearly all of it Evidently's; the first run also makes Evidently's virtualenv.

Makes a training reference (200,000 rows) and a window of logged predictions (1,000,000 rows) with
24 numeric and 4 categorical features (numpy, fixed seed), drift injected into a few of them
(a shifted mean, a wider spread, more missing values, changed category shares, unseen categories),
and writes both once as Parquet into a temporary folder. Then, on those files:

- this project: `mlops_nb.drift.drift_table` with the default `MonitorSettings`, in this process,
  timed `--repeat` times (the median counts);
- Evidently 0.7: `Report([DataDriftPreset()])`, its default preset, in its own virtualenv
  (bench/.venv-evidently, made from bench/evidently-requirements.txt on the first run: Evidently
  needs pandas < 3) through bench/evidently_drift.py, which times itself and prints JSON.

Both sides read the Parquet files outside the timed part (reading is reported apart). Writes
bench/results/monitor.json with both times, "ratio" = Evidently's time / this project's, and the
columns each flagged as drifted and where they agree (see bench/README.md). `--profile` adds the
functions `drift_table` spends its time in.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
SEED = 0
GOAL = {"ratio_at_least": 20}
EVIDENTLY_VENV = HERE/".venv-evidently"
EVIDENTLY_REQUIREMENTS = HERE/"evidently-requirements.txt"
NUMERIC = [f"num_{i:02d}" for i in range(24)]
CATEGORICAL = [f"cat_{i}" for i in range(4)]
CATEGORIES = {"cat_0": 5, "cat_1": 20, "cat_2": 60, "cat_3": 8}  # distinct values of each categorical feature
# What is changed in the current window; every other feature has the reference's distribution.
INJECTED = {"num_00": "mean shifted by half a standard deviation",
            "num_01": "spread widened 1.5 times around the mean",
            "num_02": "missing share from 1% to 15%",
            "num_04": "mean shifted by 0.05 standard deviations (too small to count as drift)",
            "cat_0": "the first category's share moved to the last",
            "cat_1": "10% of values are categories the reference never had"}


# ---- the data ----------------------------------------------------------------------------------

def numeric_feature(rng: np.random.Generator, i: int, n: int) -> np.ndarray:
    "The i-th numeric feature, undrifted: normal, log-normal, uniform or counts in turn, each with its own scale."
    kind, scale = i % 4, 1 + i
    if kind == 0: return rng.normal(10*scale, scale, n)
    if kind == 1: return rng.lognormal(np.log(scale), 0.6, n)
    if kind == 2: return rng.uniform(-scale, 3*scale, n)
    return rng.poisson(3 + scale, n).astype(np.float64)


def categorical_feature(rng: np.random.Generator, name: str, n: int, current: bool) -> np.ndarray:
    "Category labels with Zipf-like shares; in the current window, `cat_0` and `cat_1` drift as INJECTED says."
    k = CATEGORIES[name]
    shares = 1/np.arange(1, k + 1)
    if current and name == "cat_0": shares[-1], shares[0] = shares[-1] + shares[0]/2, shares[0]/2
    labels = np.array([f"{name}_{j}" for j in range(k)] + [f"{name}_new_{j}" for j in range(3)], dtype=object)
    codes = rng.choice(k, n, p=shares/shares.sum())
    if current and name == "cat_1":
        unseen = rng.random(n) < 0.10
        codes[unseen] = k + rng.integers(0, 3, unseen.sum())
    return labels[codes]


def make_frame(n: int, current: bool) -> pl.DataFrame:
    "A frame of all features, 1% missing in each (15% in `num_02` of the current window), the numeric drift applied."
    rng = np.random.default_rng([SEED, int(current)])
    columns = {}
    for i, name in enumerate(NUMERIC):
        x = numeric_feature(rng, i, n)
        if current and name in ("num_00", "num_04"): x += (0.5 if name == "num_00" else 0.05)*x.std()
        if current and name == "num_01": x = x.mean() + 1.5*(x - x.mean())
        missing = rng.random(n) < (0.15 if current and name == "num_02" else 0.01)
        columns[name] = pl.Series(name, np.where(missing, np.nan, x)).fill_nan(None)
    for name in CATEGORICAL:
        x = categorical_feature(rng, name, n, current)
        columns[name] = pl.Series(name, x, dtype=pl.String).scatter(np.flatnonzero(rng.random(n) < 0.01), None)
    return pl.DataFrame(columns)


def write_frames(folder: Path, reference_rows: int, current_rows: int) -> dict:
    "Generate both frames and write them as Parquet; the paths, and how long it took."
    start = time.perf_counter()
    frames = {"reference": make_frame(reference_rows, current=False), "current": make_frame(current_rows, current=True)}
    generated = time.perf_counter()
    paths = {side: folder/f"{side}.parquet" for side in frames}
    for side, df in frames.items(): df.write_parquet(paths[side])
    return {"paths": paths, "generate_seconds": generated - start, "write_seconds": time.perf_counter() - generated,
            "parquet_mb": {side: p.stat().st_size/2**20 for side, p in paths.items()}}


# ---- this project's side -----------------------------------------------------------------------

def time_project(paths: dict, repeat: int, profile: bool) -> dict:
    "Read both files with polars, then time `drift_table` `repeat` times; optionally profile one more call."
    from mlops_nb.config import load_settings
    from mlops_nb.drift import drift_table
    monitor = load_settings(environ={}).monitor
    start = time.perf_counter()
    reference, current = pl.read_parquet(paths["reference"]), pl.read_parquet(paths["current"])
    read = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        table = drift_table(reference, current, NUMERIC, CATEGORICAL, monitor)
        runs.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(runs), "runs_seconds": runs, "read_seconds": read,
              "drifted": sorted(table.filter("drifted")["feature"]), "table": table.to_dicts(),
              "thresholds": monitor.thresholds, "bins": monitor.bins}
    if profile: result["profile"] = profile_call(drift_table, reference, current, NUMERIC, CATEGORICAL, monitor)
    return result


def profile_call(f, *args, top: int = 30) -> str:
    "cProfile of one call: the `top` functions by cumulative time, as pstats prints them."
    profiler = cProfile.Profile()
    profiler.runcall(f, *args)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---- Evidently's side --------------------------------------------------------------------------

def evidently_python() -> Path:
    "Evidently's virtualenv, made (or brought up to date) from bench/evidently-requirements.txt when it is not already."
    python, stamp = EVIDENTLY_VENV/"bin"/"python", EVIDENTLY_VENV/"installed-requirements.txt"
    wanted = EVIDENTLY_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted: return python
    print(f"making Evidently's environment in {EVIDENTLY_VENV} ...", flush=True)
    uv = ["python3", "-m", "uv"]
    if not python.exists(): subprocess.run(uv + ["venv", str(EVIDENTLY_VENV)], check=True, capture_output=True)
    done = subprocess.run(uv + ["pip", "install", "--python", str(python), "-r", str(EVIDENTLY_REQUIREMENTS)],
                          capture_output=True, text=True)
    if done.returncode != 0: raise RuntimeError(f"installing Evidently failed:\n{done.stderr[-3000:]}")
    stamp.write_text(wanted)
    return python


def time_evidently(paths: dict) -> dict:
    "Run bench/evidently_drift.py in Evidently's virtualenv; its JSON, and the process's wall time (imports included)."
    command = [str(evidently_python()), str(HERE/"evidently_drift.py"), str(paths["reference"]), str(paths["current"]),
               ",".join(NUMERIC), ",".join(CATEGORICAL)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0: raise RuntimeError(f"Evidently failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": time.perf_counter() - start}


# ---- the comparison ----------------------------------------------------------------------------

def agreement(project: dict, evidently: dict) -> dict:
    """Which features both, one or neither flagged, how many of the injected drifts each found, and the one measure
    both compute: the normalised Wasserstein distance of numbers (the project's and Evidently's divide by the
    reference's standard deviation)."""
    features, p, e = NUMERIC + CATEGORICAL, set(project["drifted"]), set(evidently["drifted"])
    ours = {row["feature"]: row["wasserstein"] for row in project["table"]}
    wasserstein = {f: {"project": ours[f], "evidently": evidently["columns"][f]["score"]} for f in NUMERIC}
    return {"wasserstein": wasserstein, "wasserstein_max_abs_difference": max(abs(w["project"] - w["evidently"]) for w in wasserstein.values()),
            "both": sorted(p & e), "only_project": sorted(p - e), "only_evidently": sorted(e - p),
            "features_agreeing": sum((f in p) == (f in e) for f in features), "features": len(features),
            "injected_found": {"project": sorted(p & INJECTED.keys()), "evidently": sorted(e & INJECTED.keys())}}


def machine() -> dict:
    import pandas, pyarrow
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "polars": pl.__version__, "pandas": pandas.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__,
            "polars_threads": pl.thread_pool_size(), "load_average_1min_at_end": os.getloadavg()[0]}


def rounded(d):
    if isinstance(d, dict): return {k: rounded(v) for k, v in d.items()}
    if isinstance(d, list): return [rounded(v) for v in d]
    if isinstance(d, float): return round(d, 4)
    return d


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--current", type=int, default=1_000_000, help="rows of logged predictions (default 1,000,000)")
    p.add_argument("--reference", type=int, default=200_000, help="rows of the training reference (default 200,000)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls of drift_table; the median counts (default 3)")
    p.add_argument("--profile", action="store_true", help="profile one more call of drift_table and keep the profile")
    p.add_argument("--out", default=str(HERE/"results"/"monitor.json"))
    a = p.parse_args(argv)

    evidently_python()  # made before anything is timed
    load_at_start = os.getloadavg()[0]  # other work on the machine slows both sides
    with tempfile.TemporaryDirectory(prefix="monitor_bench_") as folder:
        data = write_frames(Path(folder), a.reference, a.current)
        print(f"reference {a.reference:,} rows, current {a.current:,} rows, {len(NUMERIC)} numeric + {len(CATEGORICAL)} "
              f"categorical features; written in {data['generate_seconds'] + data['write_seconds']:.1f} s", flush=True)
        evidently = time_evidently(data["paths"])
        print(f"  Evidently DataDriftPreset: {evidently['seconds']:7.2f} s  drifted: {', '.join(evidently['drifted']) or 'none'}", flush=True)
        project = time_project(data["paths"], a.repeat, a.profile)
        print(f"  mlops_nb drift_table:      {project['seconds']:7.2f} s  drifted: {', '.join(project['drifted']) or 'none'}", flush=True)
    if project.get("profile"): print(project["profile"])

    ratio = evidently["seconds"]/project["seconds"]
    report = {"benchmark": "feature drift of logged predictions against a training reference: "
                           "mlops_nb.drift.drift_table against Evidently's Report([DataDriftPreset()])",
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ("bench/monitor_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "seed": SEED, "reference_rows": a.reference, "current_rows": a.current,
              "numeric_columns": len(NUMERIC), "categorical_columns": len(CATEGORICAL), "columns": len(NUMERIC) + len(CATEGORICAL),
              "injected_drift": INJECTED, "missing_share_elsewhere": 0.01,
              "data": {k: v for k, v in data.items() if k != "paths"},
              "project_seconds": project["seconds"], "evidently_seconds": evidently["seconds"], "ratio": ratio,
              "goal": GOAL, "goal_met": ratio >= GOAL["ratio_at_least"],
              "drifted": {"project": project["drifted"], "evidently": evidently["drifted"]},
              "agreement": agreement(project, evidently),
              "versions": {"evidently": evidently["versions"]["evidently"], "pandas_evidently": evidently["versions"]["pandas"],
                           "pandas_project": machine()["pandas"], "polars": pl.__version__},
              "machine": {**machine(), "load_average_1min_at_start": load_at_start}, "project": project, "evidently": evidently}
    report = rounded(report)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    agree = report["agreement"]
    print(f"Evidently {evidently['seconds']:.2f} s, drift_table {project['seconds']:.2f} s: ratio {ratio:.1f} "
          f"(goal {GOAL['ratio_at_least']}: {'met' if report['goal_met'] else 'missed'}); "
          f"verdicts agree on {agree['features_agreeing']}/{agree['features']} features")
    return report


if __name__ == "__main__":
    main()
