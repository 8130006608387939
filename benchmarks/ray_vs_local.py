"""``dlmi predict --aided`` on the same images: the local engine against Ray (a local Ray, ``--actors``).

Each engine runs as a whole ``dlmi predict`` process (imports, Ray's start-up and shut-down for Ray, reading,
inference, writing the PNGs and tables) into a fresh output folder, timed from outside; the peak resident
memory is the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet and workers
included), sampled from /proc every 0.1 s. The engines alternate for ``--rounds`` rounds, so other work on the
machine slows them alike. Ray's fixed start-up cost is measured apart, in its own process: ``ray.init`` (a
local Ray), then the actor pool's creation up to the first image predicted (one image).

BUSI: every image file under the folder except the masks (``--exclude '*_mask*'``, as dlmi predict needs for
BUSI's layout: without it the ``*_mask.png`` files are predicted as images too).

Usage (from the repository root; a trained export; ``nice`` on a shared machine)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/ray_vs_local.py \\
        --models runs/best-cpu/busi-best/exported --data ../shared/data/busi --actors 2

``--limit N`` takes the first N images (sorted) only, to try the script; ``--results DIR`` writes elsewhere
than ``benchmarks/results`` (files ``ray-vs-local-cpu.md`` and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXCLUDE = "*_mask*"

STARTUP = textwrap.dedent("""
    import json, logging, sys, time
    started = time.perf_counter()
    import ray
    from dlmi.inference.folder import PredictSettings
    from dlmi.inference.predictor import open_predictor
    from dlmi.inference.ray_engine import RaySettings, predict_with_ray
    from dlmi.machine import machine_cpus
    folder, out, models, actors = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    imported = time.perf_counter()
    ray.init(num_cpus=max(machine_cpus(), actors + 1), include_dashboard=False, logging_level=logging.WARNING)
    initialised = time.perf_counter()
    opener = {"models": [models], "aided": True}
    first = []
    def progress(done, failed, total):
        if done and not first:
            first.append(time.perf_counter())
    predict_with_ray(folder, out, open_predictor(**opener), opener, PredictSettings(aided=True),
                     RaySettings(actors=actors), log=lambda _: None, progress=progress)
    ray.shutdown()
    print(json.dumps({"import_s": imported - started, "ray_init_s": initialised - imported,
                      "actors_to_first_image_s": first[0] - initialised}))
""")


def tree_rss(root: int) -> int:
    """Bytes resident in process ``root`` and all its descendants now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def timed(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time, exit code and peak tree RSS of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    return {"wall_s": wall, "exit": process.returncode, "peak_rss_mb": peak[0] / 2 ** 20,
            "stdout_tail": out.strip().splitlines()[-2:], "stderr_tail": err.strip().splitlines()[-3:]}


def image_folder(data: Path, limit: int | None, work: Path) -> tuple[Path, int]:
    """The images to predict (all but the masks): ``data`` itself, or a folder of links to the first
    ``limit`` of them."""
    from dlmi.discovery import scan_images

    files = scan_images(data, patterns=(EXCLUDE,)).files
    if limit is None:
        return data, len(files)
    folder = work / "images"
    for file in files[:limit]:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).symlink_to((data / file).resolve())
    return folder, min(limit, len(files))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="dlmi-ray-bench-") as work_dir:
        work = Path(work_dir)
        folder, images = image_folder(Path(args.data), args.limit, work)
        base = [sys.executable, "-m", "dlmi", "predict", "--aided", str(folder), "--models", str(args.models),
                "--exclude", EXCLUDE, "--batch-size", str(args.batch_size)]
        engines = {"local": [], "ray": ["--engine", "ray", "--actors", str(args.actors)]}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
        load_before = os.getloadavg()
        for round_number in range(args.rounds):
            for name, extra in engines.items():
                out = work / f"out-{name}-{round_number}"
                run = timed([*base, "--out", str(out), *extra], env)
                if run["exit"] not in (0, 1):
                    raise SystemExit(f"{name} failed: {run['stderr_tail']}")
                run["predicted"] = sum(1 for _ in (out / "masks").rglob("*.png"))
                if run["predicted"] != images:
                    raise SystemExit(f"{name}: {run['predicted']} of {images} images predicted: "
                                     f"{run['stderr_tail']}")
                runs[name].append(run)
        one = work / "one"
        one.mkdir()
        first = next(p for p in sorted(Path(folder).rglob("*.png")) if "_mask" not in p.name)
        (one / first.name).symlink_to(first.resolve())
        startup = subprocess.run([sys.executable, "-c", STARTUP, str(one), str(work / "out-one"),
                                  str(args.models), str(args.actors)], env=env, capture_output=True,
                                 text=True)
        if startup.returncode:
            raise SystemExit(f"start-up measurement failed: {startup.stderr[-2000:]}")
        start_up = json.loads(startup.stdout.strip().splitlines()[-1])
        load_after = os.getloadavg()
    summary = {}
    for name, measured in runs.items():
        wall = statistics.median(r["wall_s"] for r in measured)
        summary[name] = {"wall_s": round(wall, 2), "images_per_s": round(images / wall, 2),
                         "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in measured), 1),
                         "walls_s": [round(r["wall_s"], 2) for r in measured],
                         "predicted": [r["predicted"] for r in measured]}
    fixed = start_up["ray_init_s"] + start_up["actors_to_first_image_s"]
    after_start = max(summary["ray"]["wall_s"] - fixed, 1e-6)
    summary["ray"]["images_per_s_after_start_up"] = round(images / after_start, 2)
    return {
        "what": "dlmi predict --aided, whole process, local engine vs --engine ray (a local Ray)",
        "images": images, "data": str(args.data), "exclude": EXCLUDE, "models": str(args.models),
        "actors": args.actors, "batch_size": args.batch_size, "rounds": args.rounds,
        "engines": summary, "ray_start_up_s": {k: round(v, 2) for k, v in start_up.items()},
        "ray_fixed_cost_s": round(fixed, 2),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_before": [round(v, 2) for v in load_before],
                    "load_after": [round(v, 2) for v in load_after]},
        "conditions": args.conditions,
        "command": shlex.join(["benchmarks/ray_vs_local.py", *sys.argv[1:]]),
    }


def markdown(result: dict[str, Any]) -> str:
    local, ray = result["engines"]["local"], result["engines"]["ray"]
    start = result["ray_start_up_s"]
    lines = [
        "# dlmi predict: local engine vs Ray (CPU)", "",
        f"{result['what']}; {result['images']} images of `{result['data']}` (all image files but the masks, "
        f"`--exclude '{result['exclude']}'`), models `{result['models']}`, batch {result['batch_size']}, Ray "
        f"with {result['actors']} actors, median of {result['rounds']} alternating round(s). Peak memory: "
        "the largest sum of resident memory over the process and its descendants (Ray's own processes "
        "included).", "",
        "| engine | wall s | images/s | peak memory MB |", "|---|---|---|---|",
        f"| local | {local['wall_s']} | {local['images_per_s']} | {local['peak_rss_mb']} |",
        f"| ray, {result['actors']} actors | {ray['wall_s']} | {ray['images_per_s']} | "
        f"{ray['peak_rss_mb']} |",
        "",
        f"Ray's fixed start-up cost: {result['ray_fixed_cost_s']} s = `ray.init` of a local Ray "
        f"{start['ray_init_s']} s + the actor pool's creation up to the first image predicted "
        f"{start['actors_to_first_image_s']} s (measured apart, one image; importing dlmi and Ray "
        f"{start['import_s']} s more). Ray without that cost: {ray['images_per_s_after_start_up']} images/s.",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}, load average "
        f"{result['machine']['load_before']} before, {result['machine']['load_after']} after. "
        f"{result['conditions']}", "",
        f"Command: `{result['command']}`", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, type=Path, help="an export folder (two_stage.onnx)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=int, help="the first N images only (to try the script)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--conditions", default="", help="a sentence on what else ran on the machine")
    args = parser.parse_args()
    result = measure(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ray-vs-local-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "ray-vs-local-cpu.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
