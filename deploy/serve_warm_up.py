"""Start `mlops_serve` once against an empty local registry and ask each endpoint, so that Python writes the
bytecode of the modules a serving process loads, and only those.

usage: python serve_warm_up.py SETTINGS.toml

The serving image compiles its virtual environment this way instead of compiling every module of every
package (some 35 MB of bytecode for code the server never imports). A module missed here still works: Python
compiles it in memory when it is first imported. The clients of a tracking server and of PostgreSQL, which an
empty local registry never reaches, are imported by name."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ALSO_IMPORTED = ["mlflow.store.model_registry.rest_store", "mlflow.store.tracking.rest_store", "mlflow.store.artifact.http_artifact_repo",
                 "mlflow.store.artifact.local_artifact_repo", "mlflow.artifacts", "sqlalchemy.dialects.postgresql.psycopg"]


def ask(url:str, body:bytes|None=None) -> tuple[int, bytes]:
    "The status and body of a GET (or, with `body`, a POST of JSON) to `url`."
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer: return answer.status, answer.read()
    except urllib.error.HTTPError as e: return e.code, e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(settings:str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "; ".join(f"import {m}" for m in ALSO_IMPORTED)], env=env, check=True)
    env |= {"MLOPS_STATE_DIR": tempfile.mkdtemp(prefix="warm_up_"), "MLOPS_SERVE__POLL_SECONDS": "0"}
    port = free_port()
    server = subprocess.Popen(["mlops_serve", "--config", settings, "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until its first attempt to load a model (the registry's store created and asked) is over
            if server.poll() is not None: sys.exit(f"mlops_serve stopped during the warm-up (exit {server.returncode})")
            try:
                if json.loads(ask(f"{base}/ready")[1]).get("attempts", 0) >= 1: break
            except OSError: pass
            time.sleep(0.1)
        statuses = {path: ask(base + path)[0] for path in ("/ready", "/version", "/metrics", "/schema/openapi.json")}
        statuses["/predict"] = ask(f"{base}/predict", b'{"rows": [{}]}')[0]
        statuses["/feedback"] = ask(f"{base}/feedback", b'{"labels": []}')[0]
        print("warm-up:", statuses)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) != 2: sys.exit(__doc__)
    main(sys.argv[1])
