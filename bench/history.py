"""Each benchmark's earlier runs, kept in its result file: a goal counts only when it holds in three
consecutive runs, so every run's headline figures stay on record beside the latest run's full ones."""
import json
import subprocess
from pathlib import Path

HEADLINE = ("created", "commit", "ratio", "memory_ratio", "goal_met", "serve_image_mb", "serve_cold_start_s", "shadow_share_of_throughput", "p99_ms_1_row_concurrency_8_shadow", "p99_ms_1_row_concurrency_8", "share_of_bare_asgi", "sync_share_of_batched")


def commit() -> str:
    "The project's checked-out commit, and '+changes' when the work tree differs from it."
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"], cwd=root, capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def with_history(report: dict, out: Path, keep: int = 12) -> dict:
    "`report` with the code's commit and the headline figures of the runs already recorded in `out`, oldest first."
    old = json.loads(out.read_text()) if out.exists() else {}
    earlier = old.get("history", []) + ([{k: old[k] for k in HEADLINE if k in old}] if old else [])
    return {**report, "commit": commit(), "history": earlier[-keep:]}
