"""Data-layer benchmark: the library's polars functions on the streaming engine against plain pandas.

    .venv/bin/python bench/data_bench.py [--rows N]

Makes `N` synthetic flights (`mlops_nb.synthetic`, fixed seed), writes them as Parquet parts in a
temporary folder, infers the data contract and fits the feature transformation once on a sample,
then runs the same steps (read, join weather and planes, keep usable rows, label, check the
contract, drop broken rows, build the model's features, write them as Parquet) in one fresh
process per variant, so that each process's peak RSS is that variant's alone:

- `polars_streaming`: the library's own functions (`read_data(lazy=True)`, `rows_keeping_contract`,
  `apply_transform`) on one lazy query, sunk with the streaming engine;
- `pandas`: the same steps written plainly with pandas;
- `polars_eager_library` (extra): the eager path the ingest stage takes today (`read_data`,
  `enforce_contract`, `apply_transform` on a DataFrame).

The top-level `ratio` and `memory_ratio` compare `polars_streaming` with `pandas`; every polars
variant is compared under `versus_pandas`. A variant whose memory passes `--max-rss-mb` is stopped
and reported as failed.

Writes bench/results/data.json (see bench/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from history import with_history

HERE = Path(__file__).resolve().parent
SEED = 0
POLARS, PANDAS, EAGER = "polars_streaming", "pandas", "polars_eager_library"


def _peak_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux's VmHWM belongs to the process's own address space, so it starts afresh at `exec`;
    `ru_maxrss` would carry over the parent's peak at `fork` (the fallback elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(l.split()[1])/1024 for l in status.splitlines() if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024


def _settings(work: Path):
    "The flights example's data settings, with the sources pointing at the synthetic Parquet files."
    import msgspec
    from mlops_nb.config import SourceSettings, example_settings_file, load_settings
    folder = work/"data"
    return msgspec.structs.replace(load_settings(example_settings_file(), environ={}).data, sources={"flights": SourceSettings(uri=str(folder/"flights-*.parquet")),
                                 "weather": SourceSettings(uri=str(folder/"weather.parquet")),
                                 "planes": SourceSettings(uri=str(folder/"planes.parquet"))},
                        contract=str(work/"contract.json"))


# ---- steps, each run in its own process by `_child` -------------------------------------------

def prepare(work: Path, rows: int, parts: int, sample_rows: int) -> dict:
    "Generate and write the data; infer the contract and fit the transformation on a sample (not timed against anything)."
    import polars as pl
    from mlops_nb.config import example_settings_file, load_settings
    from mlops_nb.records import write_json
    from mlops_nb.synthetic import generate_flights, write_flights
    from mlops_nb.ingest import join_sources, label_rows
    from mlops_nb.contract import infer_contract
    from mlops_nb.prepare import choose_features, fit_transform
    start = time.perf_counter()
    tables = generate_flights(rows, seed=SEED)
    generated = time.perf_counter()
    write_flights(tables, work/"data", parts=parts)
    written = time.perf_counter()
    # The flights are in time order: the first rows are the first days of January, whose ranges
    # (temperatures, say) would make a contract that rejects July. Every k-th row spans the year.
    data, features = _settings(work), load_settings(example_settings_file(), environ={}).features
    every = max(1, rows//sample_rows)
    sample = {**tables, "flights": tables["flights"].gather_every(every).head(sample_rows)}
    sample = label_rows(join_sources(sample, data), data)
    contract = infer_contract(sample, data.id_columns, source=f"synthetic sample, every {every}th flight")
    numeric, categorical = choose_features(sample, data, features)
    spec = fit_transform(sample, numeric, categorical, features, data.target)
    write_json(work/"contract.json", contract)
    write_json(work/"transform.json", spec)
    files = sorted((work/"data").glob("*.parquet"))
    return {"generate_seconds": round(generated - start, 3), "write_seconds": round(written - generated, 3),
            "fit_seconds": round(time.perf_counter() - written, 3), "fit_sample_rows": sample.height, "sample_every": every,
            "parquet_mb": round(sum(f.stat().st_size for f in files)/2**20, 1), "files": [f.name for f in files],
            "features": len(spec.features), "polars_threads": pl.thread_pool_size()}


def polars_streaming(work: Path, out: Path) -> dict:
    "One lazy query from the Parquet files to the features, built from the library's functions, sunk with the streaming engine."
    import polars as pl
    from mlops_nb.records import DataContract, TransformSpec, read_json
    from mlops_nb.ingest import read_data, scan_source
    from mlops_nb.contract import rows_keeping_contract
    from mlops_nb.prepare import apply_transform
    data, contract, spec = _settings(work), read_json(work/"contract.json", DataContract), read_json(work/"transform.json", TransformSpec)
    imported = _peak_mb()
    start = time.perf_counter()
    good = rows_keeping_contract(read_data(data, lazy=True), contract, "the synthetic flights")
    apply_transform(good, spec).sink_parquet(out, compression="snappy", engine="streaming")  # snappy, as pandas writes
    seconds = time.perf_counter() - start
    rows_in = scan_source(data.sources[data.source]).select(pl.len()).collect().item()
    rows_out = pl.scan_parquet(out).select(pl.len()).collect().item()
    return {"seconds": seconds, "rss_after_imports_mb": imported, "rows_in": rows_in, "rows_out": rows_out}


def polars_eager_library(work: Path, out: Path) -> dict:
    "The path the ingest stage takes today: read_data (eager), enforce_contract, apply_transform on a DataFrame."
    from mlops_nb.records import DataContract, TransformSpec, read_json
    from mlops_nb.ingest import read_data
    from mlops_nb.contract import enforce_contract
    from mlops_nb.prepare import apply_transform
    data, contract, spec = _settings(work), read_json(work/"contract.json", DataContract), read_json(work/"transform.json", TransformSpec)
    imported = _peak_mb()
    start = time.perf_counter()
    df = read_data(data)
    good, quarantined = enforce_contract(df, contract, data.max_broken_share, "the synthetic flights")
    X = apply_transform(good, spec)
    X.write_parquet(out, compression="snappy")
    seconds = time.perf_counter() - start
    import polars as pl
    rows_in = pl.scan_parquet(str(work/"data"/"flights-*.parquet")).select(pl.len()).collect().item()
    return {"seconds": seconds, "rss_after_imports_mb": imported, "rows_in": rows_in, "rows_labelled": df.height,
            "rows_broken": quarantined.height, "rows_out": X.height}


def pandas_plain(work: Path, out: Path) -> dict:
    "The same steps as a data scientist would write them with pandas."
    import numpy as np
    import pandas as pd
    contract = json.loads((work/"contract.json").read_text())
    spec = json.loads((work/"transform.json").read_text())
    folder = work/"data"
    imported = _peak_mb()
    start = time.perf_counter()
    flights = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("flights-*.parquet"))], ignore_index=True)
    weather = pd.read_parquet(folder/"weather.parquet", columns=[
        "origin", "time_hour", "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"])
    planes = pd.read_parquet(folder/"planes.parquet").rename(columns={"year": "plane_year"})[
        ["tailnum", "plane_year", "type", "manufacturer", "model", "engines", "seats", "engine"]]
    df = flights.merge(weather.drop_duplicates(["origin", "time_hour"]), on=["origin", "time_hour"], how="left")
    df = df.merge(planes.drop_duplicates("tailnum"), on="tailnum", how="left")
    rows_in = len(flights)
    del flights
    # usable rows and the label
    df = df[df["dep_time"].notna() & df["arr_delay"].notna()]
    df["late"] = (df["arr_delay"] > 15).astype("int8")
    rows_labelled = len(df)
    # the contract: missing values, ranges, categories, duplicate keys
    missing = set(contract["columns"]) - set(df.columns)
    if missing: raise ValueError(f"columns missing: {missing}")
    broken = np.zeros(len(df), dtype=bool)
    for col, rule in contract["columns"].items():
        if not rule["nullable"]: broken |= df[col].isna().to_numpy()
        if "min" in rule: broken |= ((df[col] < rule["min"]) | (df[col] > rule["max"])).to_numpy()
        if rule.get("unknown") == "reject": broken |= (df[col].notna() & ~df[col].isin(rule["categories"])).to_numpy()
    broken |= df.duplicated(contract["keys"], keep=False).to_numpy()
    df = df[~broken]
    # features: the derived ones, then gaps, outliers and category codes as fitted
    df["weekday"] = pd.to_datetime(df[["year", "month", "day"]]).dt.dayofweek + 1
    df["route"] = df["origin"] + "-" + df["dest"]
    df["plane_age"] = df["year"] - df["plane_year"]
    X = {}
    for col, p in spec["numeric"].items():
        x = df[col].astype("float64")
        if p.get("low") is not None: x = x.clip(p["low"], p["high"])
        X[col] = (x if p["missing"] == "keep" else x.fillna(p["fill"])).to_numpy()
    for col, p in spec["categorical"].items():
        codes = pd.Categorical(df[col], categories=p["categories"]).codes.astype("float64")
        codes[codes < 0] = np.nan
        X[col] = codes
    X = pd.DataFrame(X)[spec["features"]]
    X.to_parquet(out, index=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_after_imports_mb": imported, "rows_in": rows_in, "rows_labelled": rows_labelled,
            "rows_broken": int(broken.sum()), "rows_out": len(X)}


def compare(work: Path, sample: int = 100_000) -> dict:
    "Row counts of every output, and the features of `sample` random rows against pandas' (within 1e-9, NaN equal to NaN)."
    import numpy as np
    import polars as pl
    outputs = {name: work/f"{name}.parquet" for name in (POLARS, PANDAS, EAGER) if (work/f"{name}.parquet").exists()}
    rows = {name: pl.scan_parquet(path).select(pl.len()).collect().item() for name, path in outputs.items()}
    result = {"rows_out": rows, "same_rows": len(set(rows.values())) == 1, "sample_rows": 0, "checks": {}}
    if PANDAS not in outputs or not result["same_rows"]: return result
    n = rows[PANDAS]
    picks = np.unique(np.r_[np.arange(min(n, 1000)), np.random.default_rng(0).integers(0, n, min(sample, n))])
    take = lambda path: (pl.scan_parquet(path).with_row_index("_i").filter(pl.col("_i").is_in(pl.Series(picks, dtype=pl.UInt32).implode()))
                         .drop("_i").collect())
    reference = take(outputs[PANDAS])
    result["sample_rows"] = len(picks)
    for name in outputs.keys() - {PANDAS}:
        other = take(outputs[name])
        if other.columns != reference.columns:
            result["checks"][name] = {"equal": False, "why": f"columns differ: {other.columns} vs {reference.columns}"}
            continue
        a, b = other.to_numpy().astype(float), reference.to_numpy().astype(float)
        bad = ~(np.isclose(a, b, rtol=0, atol=1e-9) | (np.isnan(a) & np.isnan(b)))
        both = ~(np.isnan(a) | np.isnan(b))
        per_column = {c: int(k) for c, k in zip(reference.columns, bad.sum(axis=0)) if k}
        result["checks"][name] = {"equal": not bad.any(), "cells_differing": int(bad.sum()), "by_column": per_column,
                                  "max_abs_diff": float(np.abs(a - b)[both].max()) if both.any() else 0.0}
    return result


STEPS = {"prepare": prepare, POLARS: polars_streaming, PANDAS: pandas_plain, EAGER: polars_eager_library,
         "compare": compare}


def _child(step: str, work: Path, args: dict) -> None:
    "Run one step in this (fresh) process and print its figures, with the process's peak RSS, as JSON."
    result = STEPS[step](work, **args)
    result["peak_rss_mb"] = _peak_mb()
    print("RESULT " + json.dumps(result))


def _rss_mb(pid: int) -> float:
    "A running process's resident memory now, in MB (0 once it has gone)."
    try: status = Path(f"/proc/{pid}/status").read_text()
    except OSError: return 0.0
    return next((int(l.split()[1])/1024 for l in status.splitlines() if l.startswith("VmRSS:")), 0.0)


def _run(step: str, work: Path, max_rss_mb: float = 0, **args) -> dict:
    """Run `step` in a new Python process; its figures, its peak RSS and its wall time (imports included).

    A variant whose memory passes `max_rss_mb` is stopped (rather than left to the kernel's
    out-of-memory killer on a shared machine) and reported as failed, with the memory it had reached."""
    start, seen = time.perf_counter(), 0.0
    logs = work/f"{step}.log"
    with open(logs, "w") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--child", step, "--work", str(work), "--args", json.dumps(args)],
                                stdout=out, stderr=err, text=True, cwd=HERE.parent)
        stopped = False
        while proc.poll() is None:
            seen = max(seen, _rss_mb(proc.pid))
            if max_rss_mb and seen > max_rss_mb:
                proc.kill(); proc.wait(); stopped = True
                break
            time.sleep(0.1)
        out.seek(0)
        lines = [l for l in out.read().splitlines() if l.startswith("RESULT ")]
    elapsed = time.perf_counter() - start
    if stopped or proc.returncode != 0 or not lines:
        why = (f"stopped by the benchmark when its resident memory passed {max_rss_mb:,.0f} MB" if stopped
               else f"exit code {proc.returncode}: " + logs.read_text()[-2000:])
        if step in ("prepare", "compare"): raise RuntimeError(f"step {step} failed: {why}")
        return {"failed": why, "seconds": None, "peak_rss_mb": seen, "process_seconds": elapsed}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_seconds"] = elapsed
    return result


def _machine() -> dict:
    import numpy, pandas, polars, pyarrow
    memory = next((int(l.split()[1])//1024 for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), None)
    return {"cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "memory_mb": memory, "platform": platform.platform(),
            "processor": platform.machine(), "python": platform.python_version(), "polars": polars.__version__,
            "pandas": pandas.__version__, "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}


def _rounded(d):
    if isinstance(d, dict): return {k: _rounded(v) for k, v in d.items()}
    if isinstance(d, float): return round(d, 3)
    return d


def _versus(pandas: dict, polars: dict) -> dict:
    "Time and memory of a polars variant against pandas, and whether the issue's goal is met."
    if polars.get("failed") or pandas.get("failed"):
        bound = polars["peak_rss_mb"]/pandas["peak_rss_mb"] if not pandas.get("failed") else None
        return {"ratio": None, "memory_ratio": None, "memory_ratio_at_least": bound, "goal_met": False}
    ratio, memory = pandas["seconds"]/polars["seconds"], polars["peak_rss_mb"]/pandas["peak_rss_mb"]
    return {"ratio": ratio, "memory_ratio": memory, "goal_met": ratio >= GOAL["ratio_at_least"] and memory <= GOAL["memory_ratio_at_most"]}


GOAL = {"ratio_at_least": 5, "memory_ratio_at_most": 0.5}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="synthetic flights (default 10,000,000)")
    p.add_argument("--parts", type=int, default=0, help="Parquet files for the flights (default: one per million rows)")
    p.add_argument("--sample", type=int, default=200_000, help="rows the contract and the transformation are fitted on")
    p.add_argument("--variants", default=f"{POLARS},{PANDAS},{EAGER}", help="comma-separated variants to run")
    p.add_argument("--max-rss-mb", type=float, default=0, help="stop a variant whose memory passes this (default: 60%% of RAM)")
    p.add_argument("--out", default=str(HERE/"results"/"data.json"), help="where the figures go")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (data and outputs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child: return _child(a.child, Path(a.work), json.loads(a.args))

    machine = _machine()
    cap = a.max_rss_mb or 0.6*machine["memory_mb"]
    parts = a.parts or max(1, a.rows//1_000_000)
    variants = [v for v in a.variants.split(",") if v]
    unknown = set(variants) - {POLARS, PANDAS, EAGER}
    if unknown: p.error(f"unknown variants {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="data_bench_"))
    try:
        print(f"{a.rows:,} rows in {parts} Parquet parts under {work}; a variant is stopped past {cap:,.0f} MB", flush=True)
        prepared = _run("prepare", work, rows=a.rows, parts=parts, sample_rows=a.sample)
        print(f"  generated in {prepared['generate_seconds']:.1f} s, written in {prepared['write_seconds']:.1f} s "
              f"({prepared['parquet_mb']} MB); contract and transformation fitted on {prepared['fit_sample_rows']:,} rows", flush=True)
        results = {}
        for v in variants:
            results[v] = r = _run(v, work, max_rss_mb=cap, out=str(work/f"{v}.parquet"))
            if r.get("failed"):
                (work/f"{v}.parquet").unlink(missing_ok=True)  # a stopped sink leaves a partial file
                print(f"  {v:27s} FAILED after {r['process_seconds']:.1f} s at {r['peak_rss_mb']:,.0f} MB: {r['failed'][:200]}", flush=True)
            else:
                print(f"  {v:27s} {r['seconds']:7.2f} s  peak {r['peak_rss_mb']:7,.0f} MB  rows in {r['rows_in']:,}, out {r['rows_out']:,}", flush=True)
        check = _run("compare", work)
    finally:
        if a.keep: print(f"kept {work}")
        else: shutil.rmtree(work, ignore_errors=True)

    report = {"benchmark": "data layer: read, join, label, check the contract, build features, write Parquet",
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ("bench/data_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "rows": a.rows, "parts": parts, "seed": SEED, "max_rss_mb": cap, "machine": machine, "prepare": prepared,
              "variants": results, "same_rows": check["same_rows"], "rows_out": check["rows_out"],
              "sample_check": {k: v for k, v in check.items() if k not in ("rows_out", "same_rows")}, "goal": GOAL}
    if PANDAS in results:
        report["versus_pandas"] = {v: _versus(results[PANDAS], results[v]) for v in results if v != PANDAS}
        if POLARS in results:  # the headline: the library's functions on the streaming engine
            report["ratio"] = report["versus_pandas"][POLARS]["ratio"]
            report["memory_ratio"] = report["versus_pandas"][POLARS]["memory_ratio"]
            report["goal_met"] = report["versus_pandas"][POLARS]["goal_met"]
        for v, c in report["versus_pandas"].items():
            print(f"  {v:27s} " + (f"pandas time / its time = {c['ratio']:.2f}, its peak / pandas peak = {c['memory_ratio']:.2f}"
                                    if c["ratio"] else "did not finish"), flush=True)
    equal = all(c["equal"] for c in check["checks"].values())
    print(f"same rows out: {check['same_rows']}; features equal on {check['sample_rows']:,} sampled rows: {equal}", flush=True)
    report = _rounded(report)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(with_history(report, out), indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
