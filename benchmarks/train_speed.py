"""Benchmark U-Net training speed: dlmi's training step and data path against a plain reference loop.

The reference is written the way simple U-Net repositories write it: a Dataset that opens the image and
mask files with PIL and resizes them on every access, a DataLoader with ``num_workers=0``, fp32, and
``zero_grad → forward → Dice loss → backward → Adam step``. dlmi is its real trainer
(:func:`dlmi.training.start.build_trainer` + :meth:`Trainer.run_epoch`: cache, channels-last, autocast,
gradient clipping, per-image metric records), once with its defaults and in steps from a plain setting,
to show where the difference comes from. Same network (dlmi's ``unet``), size, batch, images, Adam 1e-3,
Dice loss; no augmentation on either side.

Measured: images/s of a pass over the same ``--images`` training images (one epoch), after one warm-up
pass per variant (which fills dlmi's memory cache: a later epoch). Two blocks, each in alternating rounds
(the starting variant rotates), so a busy machine slows all alike: head to head, the reference against
dlmi's defaults (``--head-reps`` rounds, short passes, so the two are measured seconds apart); then the
ablation, every variant (``--reps`` rounds). Reported: the median images/s per variant, and the median
over rounds of each round's ratio to the reference (with the rounds' range). Also: the
data path alone (loading batches, no model) with and without the caches; the peak resident memory
(``ru_maxrss``) of a real ``dlmi train segmenter`` run in a subprocess; training FLOP/s from a FLOP count
of one forward and backward pass (``torch.utils.flop_counter``).

Profiles:

* ``cpu`` (default): 128², U-Net base 16, batch 8, torch threads 2 (explicit, recorded).
* ``gpu``: 512², U-Net base 64, batch 16 on CUDA; adds the achieved TFLOP/s as a fraction of the GPU's
  dense bf16 peak (table below, by device name). cuDNN autotuning is on for every variant.

Data: BUSI's real files (``--data-dir``, default ``../shared/data/busi``) when present; otherwise the
``synthetic`` dataset written to a temporary folder as PNGs at 512² (so decoding costs about as much).

Usage (from the repository root):

    .venv/bin/python benchmarks/train_speed.py                  # cpu profile (a few minutes)
    .venv/bin/python benchmarks/train_speed.py --profile gpu    # on a CUDA machine

Results: ``benchmarks/results/train-speed-<profile>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlmi import __version__
from dlmi.datasets.base import Sample
from dlmi.plugins import create_loss, create_model, get_dataset, get_plugins
from dlmi.training.config import TrainConfig
from dlmi.training.data.split_data import SplitData
from dlmi.training.folder.run_folder import RunFolder
from dlmi.training.loop import Trainer
from dlmi.training.start import build_trainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUSI = REPO.parent / "shared" / "data" / "busi"

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched in this order.
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 989.0),
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("4090",), 165.0),
)


@dataclass(frozen=True)
class Profile:
    name: str
    image_size: int
    base_channels: int
    batch_size: int
    images: int  # training images per timed pass
    head_reps: int  # rounds of reference vs dlmi defaults
    reps: int  # rounds of the ablation
    threads: int | None
    device: str
    data_images: int  # images per pass of the data-path measurement
    rss_epochs: int
    workers: int  # of the "+ --workers" variant


PROFILES = {
    "cpu": Profile("cpu", image_size=128, base_channels=16, batch_size=8, images=16, head_reps=10, reps=3,
                   threads=2, device="cpu", data_images=160, rss_epochs=1, workers=1),
    "gpu": Profile("gpu", image_size=512, base_channels=64, batch_size=16, images=256, head_reps=10, reps=3,
                   threads=None, device="cuda", data_images=256, rss_epochs=1, workers=4),
}


# -- the reference ------------------------------------------------------------------------------------
class ReferenceDataset(torch.utils.data.Dataset):
    """How simple U-Net repositories read data: PIL open + resize of image and masks on every access."""

    def __init__(self, samples: list[Sample], size: int) -> None:
        self.samples = samples
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        size = (self.size, self.size)
        image = Image.open(sample.image_path).convert("L").resize(size, Image.Resampling.BILINEAR)
        mask = np.zeros(size, dtype=bool)
        for path in sample.mask_paths:
            mask |= np.asarray(Image.open(path).convert("L").resize(size, Image.Resampling.NEAREST)) > 127
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
        y = torch.from_numpy(mask.astype(np.float32))[None]
        return x, y


class ReferenceLoop:
    """The plain loop: fp32, no cache, ``num_workers=0``, zero_grad → forward → loss → backward → step."""

    def __init__(self, samples: list[Sample], profile: Profile, device: torch.device) -> None:
        self.device = device
        self.model = create_model("unet", in_channels=1, out_channels=1,
                                  base_channels=profile.base_channels).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = create_loss("dice")
        self.loader = torch.utils.data.DataLoader(ReferenceDataset(samples, profile.image_size),
                                                  batch_size=profile.batch_size, shuffle=True, num_workers=0)

    def train_pass(self, epoch: int) -> None:
        self.model.train()
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)


# -- dlmi -----------------------------------------------------------------------------------------------
class DlmiLoop:
    """dlmi's trainer with some settings: one training epoch over the images per pass."""

    def __init__(self, samples: list[Sample], profile: Profile, device: torch.device, work: Path,
                 **settings: Any) -> None:
        name = "-".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
        config = TrainConfig(task="segmentation", dataset="busi", out=str(work / name),
                             image_size=profile.image_size, batch_size=profile.batch_size,
                             base_channels=profile.base_channels, device=profile.device, quiet=True,
                             deterministic=device.type != "cuda", **settings).resolved()
        data = SplitData(source=get_dataset("busi"), split=None,
                       samples={"train": samples, "val": samples[:profile.batch_size], "test": []})
        self.trainer: Trainer = build_trainer(config, RunFolder(work / name), data, None, device)
        self.device = device
        self.runtime = json.loads((work / name / "runtime.json").read_text())

    def train_pass(self, epoch: int) -> None:
        trainer = self.trainer
        trainer.train_loader.sampler.set_epoch(epoch)
        trainer.run_epoch(trainer.train_loader, True, epoch)
        synchronize(self.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- data -----------------------------------------------------------------------------------------------
def busi_samples(data_dir: Path | None, work: Path, count: int) -> tuple[list[Sample], str]:
    """``count`` samples in a fixed shuffled order (all classes), from BUSI or synthetic PNGs on disk."""
    if data_dir is not None and data_dir.is_dir():
        samples = get_dataset("busi").samples(data_dir)
        origin = f"real BUSI-layout image files in {data_dir}"
    else:
        from dlmi.datasets.writer import write_class_folders

        folder = work / "synthetic-busi"
        source = get_plugins().datasets.create("synthetic", count=count, size=512, seed=0)
        write_class_folders(source, source.samples(None), folder)
        samples = get_dataset("busi").samples(folder)
        origin = f"synthetic images written as 512² PNGs ({folder}); BUSI not found"
    random.Random(0).shuffle(samples)
    return samples[:count], origin


def data_path_rates(samples: list[Sample], profile: Profile, work: Path) -> dict[str, float]:
    """images/s of loading batches only (no model): reference Dataset vs dlmi's loader and caches."""
    from dlmi.datasets.loader import ImageDataset
    from dlmi.training.data.cache import CachePlan, cached_source

    def rate(loader_pass: Callable[[], int]) -> float:
        started = time.perf_counter()
        count = loader_pass()
        return count / (time.perf_counter() - started)

    def iterate(dataset: torch.utils.data.Dataset) -> Callable[[], int]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=profile.batch_size, num_workers=0)
        return lambda: sum(len(batch[0] if isinstance(batch, list | tuple) else batch["image"])
                           for batch in loader)

    source, size = get_dataset("busi"), profile.image_size
    os.environ["DLMI_CACHE_DIR"] = str(work / "data-path-cache")
    rates = {"reference (PIL open + resize every time)": rate(iterate(ReferenceDataset(samples, size)))}
    rates["dlmi, no cache (decode + resize every time)"] = rate(iterate(ImageDataset(source, samples, size)))
    memory = ImageDataset(source, samples, size, cache=True)
    rate(iterate(memory))  # first epoch fills it
    rates["dlmi, memory cache (a later epoch)"] = rate(iterate(memory))
    disk_plan = CachePlan(memory=False, disk=True, estimate_bytes=0)
    rate(iterate(ImageDataset(cached_source(source, size, disk_plan), samples, size)))  # an earlier run
    rates["dlmi, disk cache (a later run's first epoch)"] = rate(
        iterate(ImageDataset(cached_source(source, size, disk_plan), samples, size)))
    return rates


# -- measurements ---------------------------------------------------------------------------------------
def training_flops_per_image(profile: Profile) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model("unet", in_channels=1, out_channels=1, base_channels=profile.base_channels)
        x = torch.empty(1, 1, profile.image_size, profile.image_size)
    with FlopCounterMode(display=False) as forward:
        model(x)
    with FlopCounterMode(display=False) as both:
        model(x).sum().backward()
    return float(forward.get_total_flops()), float(both.get_total_flops())


def bf16_peak_tflops(device_name: str) -> float | None:
    name = device_name.upper()
    for needles, peak in BF16_DENSE_PEAK_TFLOPS:
        if all(n in name for n in needles):
            return peak
    return None


def child_peak_rss_mb(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, stderr tail) of ``command``, measured by a wrapper process of its own."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, "
               "done.returncode); sys.stderr.write(done.stderr[-2000:])")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True)
    kib, seconds, code = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return int(kib) / 1024, float(seconds), done.stderr


def peak_rss_of_training_run(data_dir: Path, profile: Profile, work: Path,
                             hash_cache: str | None) -> dict[str, Any]:
    """Peak resident memory (ru_maxrss) of a real ``dlmi train segmenter`` run, and of importing alone."""
    out = work / "rss-run"
    command = [sys.executable, "-m", "dlmi", "train", "segmenter", "--dataset", "busi",
               "--data-dir", str(data_dir), "--image-size", str(profile.image_size),
               "--base-channels", str(profile.base_channels), "--batch-size", str(profile.batch_size),
               "--epochs", str(profile.rss_epochs), "--device", profile.device, "--quiet", "--out", str(out)]
    env = dict(os.environ)
    env.pop("DLMI_CACHE_DIR", None)
    if hash_cache:
        env["DLMI_CACHE_DIR"] = hash_cache  # the caller's own (the split audit's hashes)
    if profile.threads:
        env["OMP_NUM_THREADS"] = str(profile.threads)
    imports_mb, _, _ = child_peak_rss_mb([sys.executable, "-c", "import torch, dlmi.training.start"], env)
    peak_mb, seconds, _ = child_peak_rss_mb(command, env)
    runtime = json.loads((out / "runtime.json").read_text())
    split = json.loads((out / "split.json").read_text())
    return {
        "command": " ".join(["dlmi", *command[3:-1], "RUN_DIR"]),
        "peak_rss_mb": round(peak_mb, 1), "imports_only_rss_mb": round(imports_mb, 1),
        "seconds": round(seconds, 1), "epochs": profile.rss_epochs,
        "train_images": len(split["train"]), "val_images": len(split["val"]),
        "cache": runtime["cache"], "precision": runtime["precision"],
    }


def alternate(variants: dict[str, Any], images: int, reps: int, warm: set[str]) -> dict[str, list[float]]:
    """images/s of each variant's pass, ``reps`` rounds, variants alternating (rotating start).

    Variants not in ``warm`` first get one untimed pass (compilation, allocator, dlmi's cache fill).
    """
    names = list(variants)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        if name not in warm:
            started = time.perf_counter()
            variants[name].train_pass(0)
            print(f"  warm-up {name}: {images / (time.perf_counter() - started):.2f} images/s", flush=True)
            warm.add(name)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            variant = variants[name]
            variant.epoch = getattr(variant, "epoch", 0) + 1
            started = time.perf_counter()
            variant.train_pass(variant.epoch)
            rates[name].append(images / (time.perf_counter() - started))
        print(f"  round {rep + 1}/{reps}: " + ", ".join(f"{n} {rates[n][-1]:.2f}" for n in names), flush=True)
    return rates


def summarize(rates: dict[str, list[float]], train_flops: float) -> dict[str, dict[str, Any]]:
    """Median images/s, and the median (and range) over rounds of the ratio to the reference."""
    reference = rates["reference"]
    summary = {}
    for name, values in rates.items():
        ratios = [v / r for v, r in zip(values, reference, strict=True)]
        median = statistics.median(values)
        summary[name] = {"images_per_s": [round(v, 3) for v in values],
                         "median_images_per_s": round(median, 3),
                         "median_ratio_to_reference": round(statistics.median(ratios), 3),
                         "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                         "training_gflop_per_s": round(median * train_flops / 1e9, 2)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_BUSI)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--base-channels", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--images", type=int, help="training images per timed pass")
    parser.add_argument("--head-reps", type=int, help="rounds of reference vs dlmi defaults")
    parser.add_argument("--reps", type=int, help="rounds of the ablation (every variant)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data-images", type=int)
    parser.add_argument("--with-compile", action="store_true", help="add a --compile variant (slow start)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the peak-memory training run")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    profile = PROFILES[args.profile]
    names = ("image_size", "base_channels", "batch_size", "images", "head_reps", "reps", "threads",
             "data_images")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    profile = replace(profile, **overrides)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    device = torch.device(profile.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--profile gpu needs a CUDA device")
    load_before = os.getloadavg()
    hash_cache = os.environ.get("DLMI_CACHE_DIR")

    with tempfile.TemporaryDirectory(prefix="dlmi-train-speed-") as tmp:
        work = Path(tmp)
        os.environ["DLMI_CACHE_DIR"] = str(work / "cache")
        count = max(profile.images, profile.data_images)
        samples, origin = busi_samples(args.data_dir, work, count)
        train_samples = samples[:profile.images]
        print(f"data: {origin}; {len(train_samples)} training images per pass", flush=True)

        print("data path (no model):", flush=True)
        data_rates = data_path_rates(samples[:profile.data_images], profile, work)
        for name, value in data_rates.items():
            print(f"  {name}: {value:.1f} images/s", flush=True)

        variants: dict[str, Any] = {"reference": ReferenceLoop(train_samples, profile, device)}
        dlmi_steps = {
            "dlmi fp32, NCHW, no cache": dict(precision="fp32", channels_last=False, cache="none"),
            "dlmi + memory cache": dict(precision="fp32", channels_last=False, cache="memory"),
            "dlmi + channels-last": dict(precision="fp32", channels_last=True, cache="memory"),
            "dlmi defaults": {},
            f"dlmi defaults + --workers {profile.workers}": dict(workers=profile.workers),
        }
        if args.with_compile:
            dlmi_steps["dlmi defaults + --compile"] = dict(compile=True)
        for name, settings in dlmi_steps.items():
            variants[name] = DlmiLoop(train_samples, profile, device, work, **settings)
        defaults_runtime = variants["dlmi defaults"].runtime
        warm: set[str] = set()
        print(f"head to head, images/s ({profile.head_reps} alternating rounds):", flush=True)
        head = {name: variants[name] for name in ("reference", "dlmi defaults")}
        head_rates = alternate(head, len(train_samples), profile.head_reps, warm)
        print(f"ablation, images/s ({profile.reps} alternating rounds):", flush=True)
        rates = alternate(variants, len(train_samples), profile.reps, warm)

        rss = None
        if not args.skip_rss:
            rss_dir = args.data_dir if args.data_dir.is_dir() else work / "synthetic-busi"
            print("peak memory of a training run ...", flush=True)
            rss = peak_rss_of_training_run(rss_dir, profile, work, hash_cache)

    forward_flops, train_flops = training_flops_per_image(profile)
    head_summary = summarize(head_rates, train_flops)
    summary = summarize(rates, train_flops)
    gpu: dict[str, Any] | None = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = bf16_peak_tflops(name)
        best = head_summary["dlmi defaults"]["median_images_per_s"] * train_flops / 1e12
        gpu = {"device_name": name, "bf16_dense_peak_tflops": peak, "dlmi_defaults_tflops": round(best, 2),
               "fraction_of_peak": round(best / peak, 4) if peak else None,
               "max_memory_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    result = {
        "benchmark": "train_speed", "profile": asdict(profile), "dlmi_version": __version__,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "data": origin, "training_images_per_pass": len(train_samples),
        "flops_per_image": {"forward": forward_flops, "forward_backward": train_flops},
        "dlmi_defaults_runtime": defaults_runtime, "data_path_images_per_s": data_rates,
        "head_to_head": head_summary, "ablation": summary, "peak_memory": rss, "gpu": gpu,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"train-speed-{profile.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(result) + "\n")
    print(f"wrote {stem}.md and .json")


def _table(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| variant | median images/s | ratio to reference (range) | training GFLOP/s | per round |",
             "|---|---|---|---|---|"]
    for name, entry in summary.items():
        rounds = ", ".join(f"{v:.2f}" for v in entry["images_per_s"])
        low, high = entry["ratio_range"]
        rate, ratio = entry["median_images_per_s"], entry["median_ratio_to_reference"]
        lines.append(f"| {name} | {rate:.2f} | {ratio:.2f}× ({low:.2f}–{high:.2f}) | "
                     f"{entry['training_gflop_per_s']:.1f} | {rounds} |")
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(r: dict[str, Any]) -> str:
    p = r["profile"]
    runtime = r["dlmi_defaults_runtime"]
    lines = [
        f"# U-Net training speed — {p['name']} profile",
        "",
        f"U-Net (dlmi `unet`, base {p['base_channels']}) at {p['image_size']}², batch {p['batch_size']}, "
        f"Adam 1e-3, Dice loss, no augmentation; {r['training_images_per_pass']} training images per pass; "
        f"data: {r['data']}.",
        f"Machine: {r['cpu']} ({r['cpu_count']} logical CPUs), torch {r['torch']}, torch threads "
        f"{r['torch_threads']}, device `{p['device']}`; load average {r['load_average_before'][0]} before, "
        f"{r['load_average_after'][0]} after (on a shared machine the ratios within a round are the robust "
        "numbers).",
        f"dlmi defaults resolved to: precision {runtime['precision']}, channels-last "
        f"{runtime['channels_last']}, cache {runtime['cache']}, workers {runtime['workers']}.",
        "",
        "images/s = training images of one pass / its wall time (data loading included); ratio = the median "
        "over rounds of (variant / reference in the same round), with the rounds' range; GFLOP/s = median "
        f"images/s × {r['flops_per_image']['forward_backward'] / 1e9:.2f} GFLOP per image (forward + "
        "backward, counted). Each variant had one untimed warm-up pass first (for dlmi: the epoch that "
        "fills the memory cache).",
        "",
        f"## Head to head ({p['head_reps']} alternating rounds)",
        "",
    ]
    lines += _table(r["head_to_head"])
    lines += ["", f"## Where it comes from ({p['reps']} alternating rounds, every variant)", ""]
    lines += _table(r["ablation"])
    lines += ["", "## Data path alone (batches loaded, no model)", "",
              "| loader | images/s |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in r["data_path_images_per_s"].items()]
    if r["peak_memory"]:
        m = r["peak_memory"]
        lines += ["", "## Peak resident memory of a training run", "",
                  f"`{m['command']}` ({m['train_images']} training, {m['val_images']} validation images, "
                  f"{m['epochs']} epoch(s), precision {m['precision']}, cache {m['cache']}): peak RSS "
                  f"**{m['peak_rss_mb']} MB** (`ru_maxrss` of the subprocess; {m['seconds']} s including the "
                  f"split audit), of which {m['imports_only_rss_mb']} MB is importing torch and dlmi alone "
                  "(`python -c 'import torch, dlmi.training.start'`)."]
    if r["gpu"]:
        g = r["gpu"]
        peak = f"{g['bf16_dense_peak_tflops']} TFLOP/s" if g["bf16_dense_peak_tflops"] else "unknown"
        fraction = f"{100 * g['fraction_of_peak']:.1f} %" if g["fraction_of_peak"] is not None else "n/a"
        lines += ["", "## GPU", "",
                  f"{g['device_name']}: dlmi defaults reach {g['dlmi_defaults_tflops']} TFLOP/s of training "
                  f"work, {fraction} of the dense bf16 peak ({peak}); max memory allocated "
                  f"{g['max_memory_allocated_gb']} GiB."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
