"""Batch scoring: `mlops_score`'s path against the MLflow pyfunc path a user would otherwise take, in one run.

    .venv/bin/python bench/score_bench.py [--rows 10000000] [--chunk-rows 200000]

About 5 min on 2 cores at ten million rows. Prepares, untimed: `mlops_nb.synthetic` flights (fixed seed)
joined with their weather and planes as the flights example joins them, written as one Parquet file
(row groups of 100,000) without the label (the table a user scores); a data contract inferred from an evenly spaced sample of
that table; and a champion trained by the library on another synthetic year (200,000 flights) in a
fresh registry. Then each variant scores the whole table in a fresh process of its own, so that its
peak resident memory (Linux VmHWM) is its own:

- `mlops_score`: `mlops_nb.score.score_table`, what the command runs: polars' streaming engine in
  chunks, each row held to the version's contract, the version's MatrixPlan and booster, Parquet out;
- `pyfunc`: `mlflow.pyfunc.load_model("models:/<name>@champion")` and `predict` on pandas chunks of the
  same Parquet files (pyarrow's `iter_batches`), the features made by the library's own
  `apply_transform` (the pyfunc model has none), the answers gathered and written as Parquet.

Both outputs are then compared row by row. Writes bench/results/score.json with every figure, "ratio"
= pyfunc seconds / mlops_score seconds (goal at least 5) and "memory_ratio" = mlops_score peak /
pyfunc peak (goal at most 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from history import with_history

HERE = Path(__file__).resolve().parent
RESULT = HERE/"results"/"score.json"
TRAIN_ROWS, CONTRACT_SAMPLE = 200_000, 200_000


def _peak_mb() -> float:
    "This process's peak resident memory so far, in MB (VmHWM: it starts afresh at exec)."
    status = Path("/proc/self/status").read_text()
    return next(int(l.split()[1])/1024 for l in status.splitlines() if l.startswith("VmHWM:"))


def _data(folder:Path):
    "The flights example's data settings over the synthetic Parquet files in `folder`."
    import msgspec
    from mlops_nb.config import SourceSettings, example_settings_file, load_settings
    return msgspec.structs.replace(load_settings(example_settings_file(), environ={}).data,
                                   sources={"flights": SourceSettings(uri=str(folder/"flights-*.parquet")), "weather": SourceSettings(uri=str(folder/"weather.parquet")),
                                            "planes": SourceSettings(uri=str(folder/"planes.parquet"))}, contract=str(folder.parent/"contract.json"))


def prepare(work:Path, rows:int, parts:int) -> dict:
    "The table to score, the contract and a champion in a fresh registry; what it took."
    import msgspec
    import polars as pl
    from mlops_nb.config import example_settings_file, load_settings
    from mlops_nb.contract import infer_contract
    from mlops_nb.ingest import read_data
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.records import write_json
    from mlops_nb.runs import save_settings, stage_run_dir
    from mlops_nb.synthetic import generate_flights, write_flights
    started = time.perf_counter()
    write_flights(generate_flights(rows, seed=0), work/"scored", parts=parts)
    data = _data(work/"scored")
    table = read_data(data, lazy=True).drop(data.target)
    (work/"input").mkdir()
    table.sink_parquet(work/"input"/"table.parquet", row_group_size=100_000, engine="streaming")
    every = max(1, rows//CONTRACT_SAMPLE)
    sample = read_data(data, lazy=True).gather_every(every).collect(engine="streaming")
    write_json(work/"contract.json", infer_contract(sample, data.id_columns, source=f"the scored table, every {every}th flight"))
    write_flights(generate_flights(TRAIN_ROWS, seed=1), work/"training")
    settings = load_settings(example_settings_file(), environ={}, state_dir=str(work/"state"), runs_dir=str(work/"runs"), tune={"n_trials": 5})
    settings = msgspec.structs.replace(settings, data=msgspec.structs.replace(_data(work/"training"), max_broken_share=0.05))
    result = train_and_register(settings, stage_run_dir(settings))
    save_settings(settings, work/"settings.json")
    files = sorted((work/"input").glob("*.parquet"))
    return {"seconds": round(time.perf_counter() - started, 1), "input_files": len(files), "input_mb": round(sum(f.stat().st_size for f in files)/2**20, 1),
            "model_version": result.version, "contract_sample_every": every}


def mlops_score(work:Path, out:Path, chunk_rows:int) -> dict:
    from mlops_nb.config import SourceSettings, load_settings
    from mlops_nb.score import score_table
    settings = load_settings(str(work/"settings.json"), environ={})
    imported = _peak_mb()
    started = time.perf_counter()
    done = score_table(settings, SourceSettings(uri=str(work/"input"/"*.parquet")), out, chunk_rows=chunk_rows, progress=False)
    return {"seconds": time.perf_counter() - started, "rss_after_imports_mb": imported, "rows": done["rows"], "scored": done["scored"], "rejected": done["rejected"]}


def pyfunc(work:Path, out:Path, chunk_rows:int) -> dict:
    "What a user writes without mlops_score: the registered model through MLflow's pyfunc, pandas chunks of the same files."
    import mlflow
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds
    from mlops_nb.config import load_settings
    from mlops_nb.prepare import apply_transform
    from mlops_nb.records import TransformSpec, read_json
    from mlops_nb.runs import use_tracking
    settings = load_settings(str(work/"settings.json"), environ={})
    use_tracking(settings)
    imported = _peak_mb()
    started = time.perf_counter()
    uri = f"models:/{settings.model_name}@champion"
    model = mlflow.pyfunc.load_model(uri)
    files = Path(mlflow.artifacts.download_artifacts(f"{uri}/extra_files", dst_path=str(work/"pyfunc_files")))
    spec = read_json(files/"feature_transform.json", TransformSpec)
    threshold = float(model.metadata.metadata["threshold"])
    answers, row = [], 0
    for batch in ds.dataset(sorted((work/"input").glob("*.parquet"))).to_batches(batch_size=chunk_rows, columns=list(spec.inputs)):
        chunk = batch.to_pandas()
        features = apply_transform(pl.from_pandas(chunk), spec).to_pandas()
        proba = model.predict(features)
        answers.append(pd.DataFrame({"row": range(row, row + len(chunk)), "probability": proba, "label": (proba >= threshold).astype("int8")}))
        row += len(chunk)
    pd.concat(answers, ignore_index=True).to_parquet(out)
    return {"seconds": time.perf_counter() - started, "rss_after_imports_mb": imported, "rows": row, "scored": row, "rejected": 0}


VARIANTS = {"mlops_score": mlops_score, "pyfunc": pyfunc}


def child(variant:str, work:Path, chunk_rows:int) -> None:
    figures = VARIANTS[variant](work, work/f"{variant}.parquet", chunk_rows)
    print(json.dumps({**figures, "peak_mb": _peak_mb()}))


def compare(work:Path) -> dict:
    "The two outputs, row by row: the rows both scored, the largest probability difference, labels that differ."
    import polars as pl
    ours = pl.read_parquet(work/"mlops_score.parquet", columns=["row", "probability", "label"])
    theirs = pl.read_parquet(work/"pyfunc.parquet")
    both = ours.join(theirs, on="row", suffix="_pyfunc")
    return {"rows_compared": both.height, "max_abs_difference": float((both["probability"] - both["probability_pyfunc"]).abs().max()),
            "labels_differing": int((both["label"] != both["label_pyfunc"].cast(pl.Int8)).sum())}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--parts", type=int, default=10)
    p.add_argument("--chunk-rows", type=int, default=200_000)
    p.add_argument("--child", choices=list(VARIANTS))
    p.add_argument("--work")
    args = p.parse_args()
    if args.child: return child(args.child, Path(args.work), args.chunk_rows)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        prepared = prepare(work, args.rows, args.parts)
        print(f"prepared {args.rows:,} rows in {prepared['seconds']} s", flush=True)
        variants = {}
        for name in VARIANTS:
            run = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work), "--chunk-rows", str(args.chunk_rows)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            if run.returncode: raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
            variants[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{name:12s} {variants[name]['seconds']:7.1f} s, peak {variants[name]['peak_mb']:6.0f} MB, {variants[name]['scored']:,} scored, "
                  f"{variants[name]['rejected']:,} rejected", flush=True)
        agreement = compare(work)
    ours, theirs = variants["mlops_score"], variants["pyfunc"]
    report = {"benchmark": "a table scored by mlops_score and by MLflow's pyfunc on pandas chunks", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rows": args.rows, "chunk_rows": args.chunk_rows, "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "prepared": prepared, "variants": variants, "agreement": agreement,
              "ratio": round(theirs["seconds"]/ours["seconds"], 2), "memory_ratio": round(ours["peak_mb"]/theirs["peak_mb"], 3)}
    report["goal_met"] = report["ratio"] >= 5 and report["memory_ratio"] <= 0.5 and agreement["labels_differing"] == 0 and agreement["max_abs_difference"] < 1e-6
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(with_history(report, RESULT), indent=2) + "\n")
    print(f"mlops_score {ours['seconds']:.1f} s at {ours['peak_mb']:.0f} MB, pyfunc {theirs['seconds']:.1f} s at {theirs['peak_mb']:.0f} MB: "
          f"ratio {report['ratio']}, memory ratio {report['memory_ratio']}; {agreement}; goal met: {report['goal_met']}")
    return report


if __name__ == "__main__":
    main()
