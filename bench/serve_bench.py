"""Serving benchmark: one registered model served four ways, loaded by wrk in one run.

    .venv/bin/python bench/serve_bench.py [--seconds 10] [--concurrency 1,8,32] [--rows 1,100]

- `mlops_serve`: this project's Litestar app, as shipped (inference log and metrics on);
- `mlops_serve` with `serve.log_durability = "sync"`: each answer waits for its rows' commit (group
  commit), reported as "sync_share_of_batched", its throughput over the default's;
- `mlops_serve` with a challenger in shadow (a second version holding the `challenger` alias, scoring
  every request after its answer): "shadow_share_of_throughput", its throughput over the server's
  without a shadow (every other server runs with `serve.shadow_alias` empty);
- `mlflow models serve` (local env manager, one worker) on the same registered version, which is
  sent the model's feature vectors (it has no transformation of its own);
- a bare ASGI callable, no framework: it decodes the same raw rows, applies the same feature
  transformation and calls the same booster. The upper bound.

Every server runs as its own process under the same conditions, one at a time, and wrk (Debian's
package) loads it from another process with one thread. Cold start is process start to the first 200
from the readiness endpoint. Writes bench/results/serve.json with every figure and "ratio": this app's
1-row requests per second at concurrency 8 over `mlflow models serve`'s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from history import with_history

import httpx
import msgspec

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

BARE_APP = '''
"""A bare ASGI callable: the same decoding of raw rows, transformation and booster call, no framework."""
import os, msgspec, polars as pl, xgboost as xgb
from mlops_nb.config import load_settings
from mlops_nb.prepare import apply_transform
from mlops_nb.registry import load_bundle
from mlops_nb.serve import request_type, _POLARS, _JSON_TYPES

bundle = load_bundle(load_settings(os.environ["BENCH_CONFIG"]), alias="champion")
bundle.booster.set_param({"nthread": 1})
decoder = msgspec.json.Decoder(request_type(bundle.spec, bundle.contract, 1000))
schema = {c: _POLARS[_JSON_TYPES.get(t, str)] for c, t in bundle.spec.inputs.items()}
encode = msgspec.json.encode

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup": await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown": await send({"type": "lifespan.shutdown.complete"}); return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b""); more = message.get("more_body", False)
    if scope["path"] == "/ready": payload = b'{"ready": true}'
    else:
        rows = decoder.decode(body).rows
        frame = pl.DataFrame({c: [getattr(r, c) for r in rows] for c in schema}, schema=schema)
        proba = bundle.booster.inplace_predict(apply_transform(frame, bundle.spec).to_numpy())
        payload = encode({"predictions": [{"probability": p, "label": int(p >= bundle.threshold)} for p in proba.tolist()]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
'''

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.body = f:read("*a")
f:close()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd:list[str], ready_url:str, env:dict, log:Path) -> tuple[subprocess.Popen, float]:
    "Start a server; the process and the seconds from its start to the first 200 from `ready_url`."
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    while time.perf_counter() - t0 < 180:
        if proc.poll() is not None: raise RuntimeError(f"{cmd[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200: return proc, time.perf_counter() - t0
        except httpx.TransportError: pass
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{cmd[0]} was not ready within 180 s:\n{log.read_text()[-3000:]}")


def wait_for_shadow(url:str):
    "Until the server names a shadow version (it loads the challenger after the champion)."
    deadline = time.time() + 120
    while time.time() < deadline:
        if httpx.get(f"{url}/version", timeout=5).json().get("shadow_version"): return
        time.sleep(0.2)
    raise RuntimeError(f"{url} loaded no shadow version within 120 s")


def stop(proc:subprocess.Popen):
    try: os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError: return
    try: proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def _ms(text:str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value)*{"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url:str, body:Path, script:Path, connections:int, seconds:float) -> dict:
    "Requests per second, p50 and p99 latency (ms) and non-2xx answers from one wrk run."
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if set(latency) != {"50", "99"}: raise RuntimeError(f"no p50/p99 in wrk's report for {url} at c={connections}:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {"requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def registered_model(folder:Path) -> tuple[Path, dict]:
    "A champion trained on the bundled data (every 10th flight, a short study) in a fresh registry, and a challenger (another seed) beside it."
    from mlops_nb.config import example_settings_file, load_settings
    from mlops_nb.runs import save_settings, stage_run_dir
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.registry import load_bundle
    from mlops_nb.ingest import read_snapshot
    settings = load_settings(example_settings_file(), environ={}, state_dir=str(folder/"state"), runs_dir=str(folder/"runs"),
                             data={"sample_every": 10}, tune={"n_trials": 5})
    train_and_register(settings, stage_run_dir(settings))
    challenger = msgspec.structs.replace(settings, tune=msgspec.structs.replace(settings.tune, seed=7), gate=msgspec.structs.replace(settings.gate, mode="dry_run"))
    version = train_and_register(challenger, stage_run_dir(challenger)).version
    import mlflow
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "challenger", version)
    config = save_settings(settings, folder/"settings.json")
    bundle = load_bundle(settings, alias="champion")
    rows = read_snapshot({"path": settings.snapshots_dir/f"{bundle.data_digest}.parquet"}).tail(100)
    return config, {"settings": settings, "bundle": bundle, "rows": rows}


def bodies(folder:Path, model:dict, sizes:list[int]) -> dict:
    "Request bodies per server kind and row count: raw rows for ours and the bare app, feature vectors for MLflow."
    from mlops_nb.prepare import apply_transform
    spec, rows = model["bundle"].spec, model["rows"]
    out = {}
    for n in sizes:
        raw = rows.head(n).select(list(spec.inputs))
        features = apply_transform(rows.head(n), spec)
        (folder/f"raw_{n}.json").write_text(json.dumps({"rows": raw.to_dicts()}))
        (folder/f"mlflow_{n}.json").write_text(json.dumps({"dataframe_split": {"columns": features.columns, "data": features.rows()}}))
        out[n] = {"raw": folder/f"raw_{n}.json", "mlflow": folder/f"mlflow_{n}.json"}
    return out


def servers(folder:Path, config:Path, settings) -> dict:
    "How to start each server: command, readiness URL path, request path, body kind."
    port = {name: free_port() for name in ("mlops_serve", "mlops_serve_sync", "mlops_serve_shadow", "mlflow_models_serve", "bare_asgi")}
    (folder/"bare_app.py").write_text(BARE_APP)
    return {
        "mlops_serve": ([str(BIN/"mlops_serve"), "--config", str(config), "--port", str(port["mlops_serve"])],
                        port["mlops_serve"], "/ready", "/predict", "raw"),
        "mlops_serve_sync": ([str(BIN/"mlops_serve"), "--config", str(config), "--port", str(port["mlops_serve_sync"])],
                             port["mlops_serve_sync"], "/ready", "/predict", "raw", {"MLOPS_SERVE__LOG_DURABILITY": "sync"}),
        "mlops_serve_shadow": ([str(BIN/"mlops_serve"), "--config", str(config), "--port", str(port["mlops_serve_shadow"])],
                               port["mlops_serve_shadow"], "/ready", "/predict", "raw", {"MLOPS_SERVE__SHADOW_ALIAS": "challenger"}),
        "mlflow_models_serve": ([str(BIN/"mlflow"), "models", "serve", "-m", f"models:/{settings.model_name}@champion",
                                 "--env-manager", "local", "--workers", "1", "-h", "127.0.0.1", "-p", str(port["mlflow_models_serve"])],
                                port["mlflow_models_serve"], "/ping", "/invocations", "mlflow"),
        "bare_asgi": ([str(BIN/"python"), "-m", "uvicorn", "--app-dir", str(folder), "bare_app:app", "--port", str(port["bare_asgi"]),
                       "--no-access-log", "--log-level", "warning"], port["bare_asgi"], "/ready", "/predict", "raw"),
    }


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--rows", default="1,100")
    p.add_argument("--out", default=str(HERE/"results"/"serve.json"))
    p.add_argument("--servers", default="", help="only these servers (comma-separated), a quick look: the result file is not written")
    args = p.parse_args()
    if not shutil.which("wrk"): sys.exit("wrk is not installed: apt-get install wrk")
    concurrency, sizes = [int(c) for c in args.concurrency.split(",")], [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        config, model = registered_model(folder)
        settings = model["settings"]
        request_bodies = bodies(folder, model, sizes)
        (folder/"post.lua").write_text(WRK_SCRIPT)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}, "BENCH_CONFIG": str(config),
               "PATH": f"{BIN}:{os.environ['PATH']}",  # mlflow models serve starts `uvicorn` from the PATH
               "MLFLOW_TRACKING_URI": settings.mlflow_uri, "MLOPS_SERVE__POLL_SECONDS": "5", "MLOPS_SERVE__SHADOW_ALIAS": ""}
        results = {}
        chosen = {n: s for n, s in servers(folder, config, settings).items() if not args.servers or n in args.servers.split(",")}
        for name, (cmd, port, ready, path, kind, *extra) in chosen.items():
            proc, cold = start(cmd, f"http://127.0.0.1:{port}{ready}", {**env, **(extra[0] if extra else {})}, folder/f"{name}.log")
            if name == "mlops_serve_shadow": wait_for_shadow(f"http://127.0.0.1:{port}")
            runs = []
            try:
                for n in sizes:
                    for c in concurrency:
                        run = wrk(f"http://127.0.0.1:{port}{path}", request_bodies[n][kind], folder/"post.lua", c, args.seconds)
                        runs.append({"rows": n, "concurrency": c, **run})
                        print(f"{name:20s} rows={n:<4d} c={c:<3d} {run['requests_per_second']:8.0f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                              f"p99 {run['p99_ms']:6.2f} ms  non-2xx {run['non_2xx']}", flush=True)
            finally: stop(proc)
            results[name] = {"cold_start_seconds": round(cold, 2), "runs": runs}
            print(f"{name:20s} cold start {cold:.2f} s", flush=True)
    if args.servers: return results
    def rps(name, rows=1, c=8): return next(r["requests_per_second"] for r in results[name]["runs"] if r["rows"] == rows and r["concurrency"] == c)
    def p99(name, rows=1, c=8): return next(r["p99_ms"] for r in results[name]["runs"] if r["rows"] == rows and r["concurrency"] == c)
    ours, mlflow_rps, bare, sync = rps("mlops_serve"), rps("mlflow_models_serve"), rps("bare_asgi"), rps("mlops_serve_sync")
    shadow = rps("mlops_serve_shadow")
    result = {"benchmark": "one registered model served by mlops_serve, `mlflow models serve` and a bare ASGI callable, loaded by wrk",
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds_per_run": args.seconds,
              "model": {"name": settings.model_name, "features": len(model["bundle"].spec.features),
                        "trees": model["bundle"].booster.num_boosted_rounds()},
              "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "servers": results,
              "ratio": round(ours/mlflow_rps, 2),
              "share_of_bare_asgi": round(ours/bare, 3),
              "sync_share_of_batched": round(sync/ours, 3),  # serve.log_durability = "sync" against the default "batched"
              "p99_ms_1_row_concurrency_8_sync": p99("mlops_serve_sync"),
              "shadow_share_of_throughput": round(shadow/ours, 3),  # a challenger scoring every request in shadow, against none
              "p99_ms_1_row_concurrency_8_shadow": p99("mlops_serve_shadow"),
              "p99_ms_1_row_concurrency_8": p99("mlops_serve"),
              "cold_start_seconds": results["mlops_serve"]["cold_start_seconds"]}
    result["goals"] = {"ratio >= 15": result["ratio"] >= 15, "share_of_bare_asgi >= 0.75": result["share_of_bare_asgi"] >= 0.75,
                       "p99 < 10 ms": result["p99_ms_1_row_concurrency_8"] < 10, "cold start < 5 s": result["cold_start_seconds"] < 5,
                       "sync_share_of_batched >= 0.5": result["sync_share_of_batched"] >= 0.5,
                       "shadow_share_of_throughput >= 0.8": result["shadow_share_of_throughput"] >= 0.8,
                       "p99 with shadow < 12 ms": result["p99_ms_1_row_concurrency_8_shadow"] < 12}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(with_history(result, Path(args.out)), indent=2) + "\n")
    print(f"1 row, concurrency 8: {ours:.0f} req/s, {result['ratio']}x mlflow models serve ({mlflow_rps:.0f}), "
          f"{result['share_of_bare_asgi']:.0%} of the bare callable ({bare:.0f}); sync durability {sync:.0f} req/s "
          f"({result['sync_share_of_batched']:.0%}); with a shadow {shadow:.0f} req/s ({result['shadow_share_of_throughput']:.0%}, "
          f"p99 {result['p99_ms_1_row_concurrency_8_shadow']:.2f} ms); p99 {result['p99_ms_1_row_concurrency_8']:.2f} ms; "
          f"cold start {result['cold_start_seconds']} s; goals: {result['goals']}")
    return result


if __name__ == "__main__":
    main()
