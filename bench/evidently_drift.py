"""Evidently's side of bench/monitor_bench.py: its default data drift report on two Parquet files.

    bench/.venv-evidently/bin/python bench/evidently_drift.py REFERENCE.parquet CURRENT.parquet NUMERIC CATEGORICAL

Runs in its own virtualenv (bench/evidently-requirements.txt: Evidently 0.7 needs pandas < 3, the
project has pandas 3), so it imports nothing from the project. NUMERIC and CATEGORICAL are
comma-separated column names. Reads both files with pandas (timed apart), then times
`Dataset.from_pandas` for both frames and `Report([DataDriftPreset()]).run(current, reference)`,
with `time.perf_counter`; prints one JSON object on stdout: seconds, the columns found drifted
and each column's method, score and threshold.
"""
from __future__ import annotations

import json
import sys
import time


# Evidently's methods whose score is a distance (drift at or above the threshold); the others give p-values (drift below it)
DISTANCES = {"Wasserstein distance (normed)", "Jensen-Shannon distance", "PSI", "Kullback-Leibler divergence", "Hellinger distance"}


def column_drift(snapshot) -> tuple[dict, int]:
    """Per column, from the report's ValueDrift metrics: Evidently's method, score, threshold and verdict;
    and the count of drifted columns the report's own DriftedColumnsCount gives (a check on the verdicts)."""
    columns, count = {}, None
    for m in snapshot.dict()["metrics"]:
        config = m["config"]
        if config["type"].endswith(":ValueDrift"):
            score, threshold, method = float(m["value"]), config["threshold"], config["method"]
            drifted = score >= threshold if method in DISTANCES else score < threshold
            columns[config["column"]] = {"method": method, "score": score, "threshold": threshold, "drifted": drifted}
        elif config["type"].endswith(":DriftedColumnsCount"):
            count = int(m["value"]["count"])
    return columns, count


def main(reference_path: str, current_path: str, numeric: str, categorical: str) -> dict:
    start = time.perf_counter()
    import evidently, numpy, pandas as pd, pyarrow, scipy
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    imported = time.perf_counter()
    reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
    read = time.perf_counter()
    definition = DataDefinition(numerical_columns=[c for c in numeric.split(",") if c],
                                categorical_columns=[c for c in categorical.split(",") if c])
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                               Dataset.from_pandas(reference, data_definition=definition))
    seconds = time.perf_counter() - read
    columns, count = column_drift(snapshot)
    return {"seconds": seconds, "import_seconds": imported - start, "read_seconds": read - imported,
            "reference_rows": len(reference), "current_rows": len(current),
            "drifted": sorted(c for c, d in columns.items() if d["drifted"]), "drifted_count_reported": count,
            "columns": columns,
            "versions": {"evidently": evidently.__version__, "pandas": pd.__version__, "numpy": numpy.__version__,
                         "pyarrow": pyarrow.__version__, "scipy": scipy.__version__, "python": sys.version.split()[0]}}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
