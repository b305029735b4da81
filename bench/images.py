"""The images: sizes, build times and the serving container's cold start, beside the serve image as it was.

    eval "$(../shared/containers/setup.sh --env)"     # on these machines: podman's settings
    .venv/bin/python bench/images.py [--cold-starts 5] [--no-peer] [--cached]

About 8 min on 2 cores with the peer (its build downloads the 469 MB of GPU libraries), 3 min without.

1. Builds deploy/Dockerfile.serve and deploy/Dockerfile.pipeline from scratch (`--no-cache`, packages from the
   registry; `--cached` keeps podman's layer cache), timing each build and reading each image's size.
2. The peer: the serve image as it was before it was made small (its Dockerfile from commit 2747454: one stage,
   the whole requirements.lock), built and measured the same way in the same run (`--no-peer` skips it).
3. A registry with one champion, trained here by the library on a small slice of the flights, mounted
   into each serving container where it lies; the cold start is from `podman run` to the first 200 from
   /ready, `--cold-starts` times per image, and the first answer from /predict is checked against the
   library's own.

Writes bench/results/image.json: every figure, `serve_image_mb`, `pipeline_image_mb`, `serve_cold_start_s` (the
median), and "ratio" = 2,420 MB (the serve image's size when the issue was filed) / the new serve image's size;
`ratio_to_peer` is the same against the peer built in this run. Goals: a serve image of at most 500 MB,
ready in under 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import with_history  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT/"bench"/"results"/"image.json"
FILED_SERVE_MB = 2420.0
PEER_COMMIT = "2747454"  # the serve Dockerfile before the multi-stage build
GOAL_MB, GOAL_COLD_START_S = 500.0, 10.0


def podman(*args, timeout:float=3600) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if result.returncode: raise SystemExit(f"podman {' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def build(dockerfile:Path, tag:str, cached:bool) -> dict:
    "Build `dockerfile` from the project's root as `tag`: seconds and megabytes."
    started = time.perf_counter()
    podman("build", "--format", "docker", "--network=host", *([] if cached else ["--no-cache"]), "-f", str(dockerfile), "-t", tag, ".")
    seconds = time.perf_counter() - started
    size = json.loads(podman("image", "inspect", tag))[0]["Size"]
    print(f"{tag}: {size/1e6:,.0f} MB, built in {seconds:.0f} s", flush=True)
    return {"build_seconds": round(seconds, 1), "size_mb": round(size/1e6, 1)}


def registry() -> tuple[Path, Path, list[dict]]:
    "A fresh local registry with one champion, its settings file and a few request rows."
    from mlops_nb.config import standalone_settings
    from mlops_nb.ingest import read_snapshot
    from mlops_nb.pipeline import train_and_register
    from mlops_nb.registry import load_bundle
    from mlops_nb.runs import save_settings, stage_run_dir
    settings = standalone_settings()
    train_and_register(settings, stage_run_dir(settings))
    champion = load_bundle(settings, alias="champion")
    rows = read_snapshot({"path": settings.snapshots_dir/f"{champion.data_digest}.parquet"}).select(list(champion.spec.inputs)).tail(20).to_dicts()
    config = save_settings(settings, settings.state.parent/"settings.json")
    subprocess.run(["chmod", "-R", "a+rwX", str(settings.state.parent)], check=True)  # the image's user writes its inference log there
    return settings.state.parent, config, json.loads(json.dumps(rows, default=str))


def ask(url:str, body:dict|None=None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer: return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e: return e.code, {}


def cold_start(tag:str, folder:Path, config:Path, rows:list[dict]) -> tuple[float, dict]:
    "Seconds from `podman run` to the first 200 from /ready, and the first /predict answer."
    name = f"bench_cold_{os.getpid()}"
    started = time.perf_counter()
    podman("run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-v", f"{folder}:{folder}", tag,
           "mlops_serve", "--config", str(config), "--host", "0.0.0.0", "--port", "8000")
    try:
        url = "http://" + podman("port", name, "8000").split()[0]
        while time.perf_counter() - started < 180:
            try:
                if ask(f"{url}/ready")[0] == 200: break
            except OSError: pass
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        return seconds, ask(f"{url}/predict", {"rows": rows})[1]
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


def library_answer(config:Path, rows:list[dict]) -> dict:
    "What the app answers in this environment, for the same rows."
    from mlops_nb.config import load_settings
    from mlops_nb.serve import app_client, create_app
    with app_client(create_app(load_settings(config))) as client: return client.post("/predict", json={"rows": rows}).json()


def serving_figures(tag:str, folder:Path, config:Path, rows:list[dict], runs:int, expected:dict) -> dict:
    starts, answers = zip(*(cold_start(tag, folder, config, rows) for _ in range(runs)))
    same = all(a.get("predictions") == expected["predictions"] for a in answers)
    print(f"{tag}: ready in {', '.join(f'{s:.2f}' for s in starts)} s; answers as the library: {same}", flush=True)
    return {"cold_start_seconds": [round(s, 2) for s in starts], "cold_start_median_s": round(statistics.median(starts), 2), "answers_as_the_library": same}


def peer_dockerfile(folder:Path) -> Path:
    path = folder/"Dockerfile.serve.before"
    path.write_text(subprocess.run(["git", "show", f"{PEER_COMMIT}:deploy/Dockerfile.serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    return path


def main(runs:int, peer:bool, cached:bool) -> dict:
    images = {"serve": build(ROOT/"deploy"/"Dockerfile.serve", "mlops-nb-serve", cached),
              "pipeline": build(ROOT/"deploy"/"Dockerfile.pipeline", "mlops-nb-pipeline", cached)}
    with tempfile.TemporaryDirectory() as scratch:
        if peer: images["serve_before"] = build(peer_dockerfile(Path(scratch)), "mlops-nb-serve-before", cached)
        folder, config, rows = registry()
        expected = library_answer(config, rows)
        for name in [n for n in images if n.startswith("serve")]:
            images[name] |= serving_figures(f"mlops-nb-{name.replace('_', '-')}", folder, config, rows, runs, expected)
    serve = images["serve"]
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
                    "podman": podman("--version").strip()},
        "cached_layers": cached, "images": images,
        "serve_image_mb": serve["size_mb"], "pipeline_image_mb": images["pipeline"]["size_mb"],
        "serve_cold_start_s": serve["cold_start_median_s"],
        "ratio": round(FILED_SERVE_MB / serve["size_mb"], 2),
        "ratio_to_peer": round(images["serve_before"]["size_mb"] / serve["size_mb"], 2) if peer else None,
        "goal_met": serve["size_mb"] <= GOAL_MB and max(serve["cold_start_seconds"]) < GOAL_COLD_START_S and serve["answers_as_the_library"],
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-starts", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="do not build the serve image as it was")
    parser.add_argument("--cached", action="store_true", help="let podman reuse cached layers (build times then measure a rebuild)")
    args = parser.parse_args()
    report = with_history(main(args.cold_starts, not args.no_peer, args.cached), RESULT)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"serve image {report['serve_image_mb']:,.0f} MB (ratio {report['ratio']}), pipeline image {report['pipeline_image_mb']:,.0f} MB, "
          f"cold start {report['serve_cold_start_s']} s; goal met: {report['goal_met']}; {RESULT.relative_to(ROOT)}")
