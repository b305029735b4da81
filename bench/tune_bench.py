"""Tuning benchmark: the same 20-trial Optuna study over XGBoost, without pruning and with it, in one run
on the same data (200,000 training flights of the bundled data, the validation months as they are).

    .venv/bin/python bench/tune_bench.py [--rows 200000] [--trials 20]

Both studies use the library's `run_study` with a journal file, the same seed and the same settings
but `pruning`; the only difference is the pruner. Writes bench/results/tune.json with both times
and best validation ROC AUCs, and "ratio" = time without pruning / time with it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import optuna
import polars as pl
import xgboost as xgb

from mlops_nb.prepare import choose_features, fit_transform, split_rows, usable_rows
from mlops_nb.config import example_settings_file, load_settings
from mlops_nb.ingest import read_data
from mlops_nb.tune import run_study, to_dmatrix, journal_storage

HERE = Path(__file__).resolve().parent


def data(rows: int) -> tuple[xgb.DMatrix, xgb.DMatrix, dict]:
    "Training and validation matrices from the bundled flights, with the library's own transformation."
    settings = load_settings(example_settings_file(), environ={})
    d = settings.data
    df, _ = usable_rows(read_data(d), d)
    parts, _ = split_rows(df, settings.split, d)
    train = parts["train"].sample(min(rows, parts["train"].height), seed=0)
    spec = fit_transform(train, *choose_features(train, d, settings.features), settings.features, d.target)
    return to_dmatrix(train, spec), to_dmatrix(parts["valid"], spec), {"rows_train": train.height, "rows_valid": parts["valid"].height}


def study(dtrain, dvalid, tune, folder: Path, name: str) -> dict:
    start = time.perf_counter()
    s = run_study(dtrain, dvalid, tune, journal_storage(folder/f"{name}.log"), study_name=name, track=False)
    seconds = time.perf_counter() - start
    states = [t.state.name for t in s.trials]
    rounds = sum(len(t.intermediate_values) or (t.user_attrs.get("best_iteration", 0) + tune.early_stopping_rounds) for t in s.trials)
    return {"seconds": round(seconds, 2), "best_valid_auc": round(s.best_value, 5), "trials": len(states),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "best_params": s.best_params,
            "boosting_rounds_trained": rounds}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", default=str(HERE/"results"/"tune.json"))
    args = p.parse_args()
    dtrain, dvalid, sizes = data(args.rows)
    tune = msgspec.structs.replace(load_settings(example_settings_file(), environ={}).tune, n_trials=args.trials)
    with tempfile.TemporaryDirectory() as d:
        without = study(dtrain, dvalid, msgspec.structs.replace(tune, pruning=False), Path(d), "without_pruning")
        with_ = study(dtrain, dvalid, msgspec.structs.replace(tune, pruning=True), Path(d), "with_pruning")
    result = {"benchmark": "the same Optuna study over XGBoost without and with pruning", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **sizes, "trials": args.trials, "max_rounds": tune.max_rounds, "early_stopping_rounds": tune.early_stopping_rounds,
              "seed": tune.seed, "storage": "journal file",
              "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "xgboost": xgb.__version__,
                          "optuna": optuna.__version__, "polars": pl.__version__},
              "without_pruning": without, "with_pruning": with_,
              "ratio": round(without["seconds"]/with_["seconds"], 3),
              "auc_difference": round(without["best_valid_auc"] - with_["best_valid_auc"], 5)}
    result["goal_met"] = result["ratio"] >= 3 and abs(result["auc_difference"]) <= 0.002
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"without pruning: {without['seconds']:.1f} s, best AUC {without['best_valid_auc']:.4f} ({without['complete']} complete)")
    print(f"with pruning:    {with_['seconds']:.1f} s, best AUC {with_['best_valid_auc']:.4f} ({with_['complete']} complete, {with_['pruned']} pruned)")
    print(f"ratio {result['ratio']:.2f}, AUC difference {result['auc_difference']:+.4f}; goal met: {result['goal_met']}")
    return result


if __name__ == "__main__":
    main()
