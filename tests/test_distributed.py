"""Distributed training: two CPU processes under a real torchrun (gloo) train like one process.

The global batch is the same (8 = 2 processes × 4), so both runs see the same batches in the same order
with the same augmentation (:mod:`dlmi.training.data.sampling`), BatchNorm statistics span the global batch,
and DDP averages the two halves' gradients: what remains is the order of floating-point sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from busi_folder import write_busi_folder

from dlmi.errors import DlmiError
from dlmi.training.compute.distributed import DistributedContext, launch_context, resolve_device
from dlmi.training.config import TrainConfig
from dlmi.training.data.sampling import EpochSampler, ShardSampler
from dlmi.training.start import check_global_batch

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def flat_weights(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    return torch.cat([v.double().flatten() for k, v in sorted(state.items())
                      if v.is_floating_point() and "running" not in k])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one(cli, tmp_path: Path) -> None:
    data = write_busi_folder(tmp_path / "busi", per_class=8, size=48)
    keys = sorted(str(p.relative_to(data)) for p in data.rglob("*.png") if "_mask" not in p.name)
    # 16 training images (2 global batches of 8), 5 validation images (uneven shards: 3 and 2).
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"dataset": "busi", "train": keys[:16], "val": keys[16:21],
                                 "test": keys[21:]}))
    # fp32 in NCHW: the convolutions then compute each image the same way for per-process batches of 4 as
    # for a batch of 8 (channels-last or bf16 pick batch-size-dependent kernels whose last-bit rounding
    # differences Adam, which normalises every gradient element, grows to ~1e-3 within a few steps — as
    # between two one-process runs that differ only in memory layout).
    args = ["train", "segmenter", "--dataset", "busi", "--data-dir", str(data), "--split", str(split),
            "--image-size", "32", "--base-channels", "4", "--batch-size", "8", "--epochs", "2",
            "--device", "cpu", "--augment", "--seed", "3", "--precision", "fp32", "--no-channels-last"]
    env = {**os.environ, **ONE_THREAD, "DLMI_CACHE_DIR": str(tmp_path / "cache")}
    for name in LAUNCH:
        env.pop(name, None)

    one = tmp_path / "one"
    done = cli(*args, "--quiet", "--out", str(one), env=env)
    assert done.returncode == 0, done.stderr

    two, logs = tmp_path / "two", tmp_path / "logs"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--log-dir", str(logs), "--redirects", "3", "-m", "dlmi", *args, "--out", str(two)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    # Equal up to the order of floating-point sums. Measured: 1e-6 relative (L2), 1e-5 largest element;
    # two seeds differ by ~0.8 relative. Bounds: 1e-4 relative, 1e-3 largest element.
    a, b = flat_weights(two), flat_weights(one)
    assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert (a - b).abs().max().item() < 1e-3
    for ours, theirs in zip(metrics(two), metrics(one), strict=True):
        for key in ("train_loss", "val_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        for key in ("train_iou", "train_dice", "val_iou", "val_dice"):  # a pixel may flip at the threshold
            assert ours[key] == pytest.approx(theirs[key], abs=1e-3), key

    # Only rank 0 wrote: one metrics line per epoch, the same files as one process, rank 1 silent.
    assert [r["epoch"] for r in metrics(two)] == [1, 2]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    runtime = json.loads((two / "runtime.json").read_text())
    assert runtime["processes"] == 2 and runtime["backend"] == "gloo"
    assert runtime["batch_per_process"] == 4 and runtime["synced_batchnorm"] is True
    streams = {(p.parent.name, p.name): p.read_text() for p in logs.rglob("std*.log")}
    assert "epoch 2/2" in streams[("0", "stderr.log")]
    assert f"run folder: {two}" in streams[("0", "stdout.log")]
    assert "epoch" not in streams[("1", "stderr.log")] and streams[("1", "stdout.log")] == ""


def test_shards_make_up_the_one_process_batches() -> None:
    for weights in (None, [1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 3.0, 1.0]):
        single = EpochSampler(10, seed=5, weights=weights)
        shards = [EpochSampler(10, rank=r, world_size=2, seed=5, weights=weights) for r in (0, 1)]
        for epoch in (1, 2):
            for sampler in (single, *shards):
                sampler.set_epoch(epoch)
            order = [i for _, i in single]
            parts = [[i for e, i in shard] for shard in shards]
            assert all(e == epoch for e, _ in single)
            # Global batch k (8 = 2 × 4) of one process = the k-th per-process batches of the two shards.
            for k in range(2):
                batch = sorted(parts[0][4 * k:4 * k + 4] + parts[1][4 * k:4 * k + 4])
                assert batch == sorted(order[8 * k:8 * k + 8])
        single.set_epoch(1)
        first = [i for _, i in single]
        single.set_epoch(2)
        assert first != [i for _, i in single]  # a new order each epoch
    odd = [EpochSampler(5, rank=r, world_size=2, seed=0) for r in (0, 1)]
    assert [len(list(s)) for s in odd] == [3, 3]  # padded by repeating, like DistributedSampler
    assert [list(ShardSampler(5, rank=r, world_size=2)) for r in (0, 1)] == [[0, 2, 4], [1, 3]]


def test_global_batch_must_split_evenly() -> None:
    config = TrainConfig(task="segmentation", dataset="synthetic", out="x", batch_size=6).resolved()
    check_global_batch(config, DistributedContext(rank=0, world_size=3))
    with pytest.raises(DlmiError, match="global batch, split over 4 processes; choose a multiple of 4"):
        check_global_batch(config, DistributedContext(rank=0, world_size=4))


def test_launch_environment(monkeypatch) -> None:
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    assert launch_context() == DistributedContext()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DlmiError, match="not WORLD_SIZE, LOCAL_RANK; start distributed training"):
        launch_context()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = launch_context()
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (1, 2, 1, False)
    assert resolve_device("cpu", context) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DlmiError, match="no CUDA GPU"):
            resolve_device("cuda:1", context)
