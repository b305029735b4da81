"""What the inference log keeps when the server is killed outright (SIGKILL) under load: with "sync"
durability, every answered prediction; with "batched" (the default), all but those answered in the
last moments before the kill: the batch window (`serve.log_batch_seconds`) and the write under way."""
import threading
import time

import httpx
import pytest

from conftest import ServerProcess
from mlops_nb.inference_log import read_inference_log

BATCHED_WINDOW_SECONDS = 1.0  # the loss window the README documents for "batched": answered at most this long before the kill


def _killed_under_load(path, rows, log_url, durability:str, clients:int=8, seconds:float=4.0):
    "Predictions from `clients` at once for `seconds`, then SIGKILL: every answered (time, request id), and how long before the kill each lost one was answered."
    server = ServerProcess(path, MLOPS_INFERENCE_LOG=log_url, MLOPS_SERVE__LOG_DURABILITY=durability)
    answered, stop = [], threading.Event()

    def client():
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                try: r = http.post("/predict", json={"rows": rows[:2]})
                except httpx.TransportError: return  # the server is gone
                if r.status_code == 200: answered.append((time.monotonic(), r.json()["request_id"]))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads: t.start()
    time.sleep(seconds)
    killed_at = time.monotonic()
    server.proc.kill()
    server.proc.wait(timeout=30)
    stop.set()
    for t in threads: t.join(timeout=30)
    logged = read_inference_log(log_url, last=10**7)
    rows_logged = dict(logged.group_by("request_id").len().iter_rows())
    lost = sorted(killed_at - t for t, rid in answered if rows_logged.get(rid) != 2)
    return answered, lost


@pytest.mark.slow
def test_sync_durability_loses_no_answered_prediction_to_sigkill(registry, tmp_path):
    _, path, rows = registry
    answered, lost = _killed_under_load(path, rows, f"sqlite:///{tmp_path/'inference.db'}", "sync")
    assert len(answered) > 100, f"only {len(answered)} answers before the kill"
    assert lost == [], f"{len(lost)} of {len(answered)} answered predictions lost, answered {lost[-1]:.3f} s before the kill at most"


@pytest.mark.slow
def test_batched_durability_loses_only_the_last_batch_window_to_sigkill(registry, tmp_path):
    _, path, rows = registry
    answered, lost = _killed_under_load(path, rows, f"sqlite:///{tmp_path/'inference.db'}", "batched")
    assert len(answered) > 100, f"only {len(answered)} answers before the kill"
    print(f"batched: {len(lost)} of {len(answered)} answered predictions lost, answered at most {max(lost, default=0):.3f} s before the kill")
    assert max(lost, default=0) < BATCHED_WINDOW_SECONDS, f"{len(lost)} lost, the oldest answered {max(lost):.3f} s before the kill"
