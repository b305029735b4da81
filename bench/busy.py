"""A busy machine: the tune stage alone, then beside two processes that keep both cores busy, in one run.

    .venv/bin/python bench/busy.py [--every 4] [--trials 10] [--full-run]

About 3 min on 2 cores. Prepares one run folder of the flights example (every 4th flight: ingest and
clean, in this process), then executes the tune stage notebook as a pipeline run does (papermill, a
kernel of its own, `pipeline.execute_stage`) on a fresh copy of that folder three times:

- quiet: nothing else running;
- busy: beside two processes that each spin on a core (`while True: pass`);
- busy, spinning: the same, with XGBoost's OpenMP threads made to busy-wait (`OMP_WAIT_POLICY=ACTIVE`),
  as stage kernels did before they were given `PASSIVE`: the cost that setting removes.

`--full-run` adds `mlops_run` on the whole flights example (all 327,346 usable flights, as `make run`)
beside the two busy processes, and records whether it succeeded and how long it took.

Writes bench/results/busy.json: every time, "ratio" = busy / quiet (goal: at most 3), and the
earlier runs' figures under "history", so that three consecutive runs can be read side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT/"bench"/"results"/"busy.json"
GOAL = 3.0


@contextmanager
def busy_cores(n:int=2):
    "`n` processes that each keep a core busy, until the block ends."
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1)
        yield
    finally:
        for p in spinners: p.kill()
        for p in spinners: p.wait()


@contextmanager
def environment(**values):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try: yield
    finally:
        for k, v in before.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def prepared_run(work:Path, every:int, trials:int):
    "Settings and a run folder holding the ingest and clean stages' outputs, ready for the tune stage."
    from mlops_nb.config import example_settings_file, load_settings
    from mlops_nb.runs import save_settings
    from mlops_nb.clean import clean_stage
    from mlops_nb.ingest import ingest_stage
    settings = load_settings(example_settings_file(), environ={}, state_dir=str(work/"state"), runs_dir=str(work/"runs"),
                             data={"sample_every": every, "contract": str(work/"contract.json")}, tune={"n_trials": trials},
                             pipeline={"notebooks_dir": str(ROOT/"nbs")})
    run_dir = work/"prepared"
    run_dir.mkdir(parents=True)
    save_settings(settings, run_dir/"settings.json")
    ingest_stage(settings, run_dir)
    cleaned = clean_stage(settings, run_dir)
    return settings, run_dir, cleaned["rows"]


def time_tune_stage(settings, prepared:Path, label:str) -> dict:
    "Execute the tune stage notebook on a fresh copy of `prepared`; its wall time and what it found."
    from mlops_nb.pipeline import execute_stage
    run_dir = prepared.parent/label
    shutil.copytree(prepared, run_dir)
    start = time.perf_counter()
    execute_stage("04_tune", run_dir, settings, "")
    seconds = time.perf_counter() - start
    best = json.loads((run_dir/"tune"/"best.json").read_text())
    print(f"{label}: {seconds:.1f} s ({best['trials']} trials, {best['pruned']} pruned, valid ROC AUC {best['valid_auc']:.4f})", flush=True)
    return {"seconds": round(seconds, 2), "trials": best["trials"], "pruned": best["pruned"], "valid_auc": best["valid_auc"]}


def full_run_beside_busy(work:Path) -> dict:
    "`mlops_run` on the whole flights example beside two busy processes."
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.update(MLOPS_CONFIG=str(ROOT/"examples"/"flights.toml"), MLOPS_STATE_DIR=str(work/"full"/"state"),
               MLOPS_RUNS_DIR=str(work/"full"/"runs"), MLOPS_DATA__CONTRACT=str(work/"full"/"contract.json"))
    with busy_cores():
        start = time.perf_counter()
        result = subprocess.run([str(Path(sys.executable).parent/"mlops_run")], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    ledgers = [json.loads(p.read_text()) for p in (work/"full"/"runs").glob("*/run.json")]
    stages = {s["name"]: round(s.get("seconds", 0), 1) for s in ledgers[0]["stages"]} if ledgers else {}
    print(f"mlops_run on all flights beside two busy processes: exit {result.returncode} in {seconds:.0f} s {stages}", flush=True)
    if result.returncode: print(result.stderr[-3000:], file=sys.stderr)
    return {"exit_code": result.returncode, "seconds": round(seconds, 1), "stages_seconds": stages,
            "promoted": bool(ledgers and ledgers[0].get("promoted"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="keep every n-th flight")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--full-run", action="store_true", help="also mlops_run on all flights beside two busy processes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="busy_bench_"))
    try:
        settings, prepared, rows = prepared_run(work, args.every, args.trials)
        quiet = time_tune_stage(settings, prepared, "quiet")
        with busy_cores(): busy = time_tune_stage(settings, prepared, "busy")
        with busy_cores(), environment(OMP_WAIT_POLICY="ACTIVE"): spinning = time_tune_stage(settings, prepared, "busy_spinning")
        full = full_run_beside_busy(work) if args.full_run else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = busy["seconds"]/quiet["seconds"]
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    history = previous.pop("history", []) + ([previous] if previous else [])
    result = {"benchmark": "busy", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["bench/busy.py", *sys.argv[1:]]), "rows": rows, "trials": args.trials, "sample_every": args.every,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "quiet": quiet, "busy": busy, "busy_spinning": spinning,
              "ratio": round(ratio, 3), "spinning_ratio": round(spinning["seconds"]/quiet["seconds"], 3),
              "goal": GOAL, "goal_met": ratio <= GOAL, "full_run_beside_busy": full,
              "history": history[-5:]}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"busy / quiet = {ratio:.2f} (goal <= {GOAL}); spinning / quiet = {result['spinning_ratio']:.2f}; written to {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
