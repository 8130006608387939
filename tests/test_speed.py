"""Speed settings: precision, channels-last and compile change how a run computes, not what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlmi.errors import DlmiError
from dlmi.training import TrainConfig, load_trained, resume_training, train_classifier, train_segmenter
from dlmi.training.compute.precision import Precision, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_busi(tmp_path_factory) -> tuple[Path, Path]:
    """A BUSI-layout folder of 24 real 48² PNGs and a hand-made split (16 train, 4 val, 4 test)."""
    from test_distributed import write_busi_folder

    data = write_busi_folder(tmp_path_factory.mktemp("data") / "busi")
    keys = sorted(str(p.relative_to(data)) for p in data.rglob("*.png") if "_mask" not in p.name)
    split = data.parent / "split.json"
    split.write_text(json.dumps({"dataset": "busi", "train": keys[0::3] + keys[1::3],
                                 "val": keys[2::3][:4], "test": keys[2::3][4:]}))
    return data, split


@pytest.fixture(autouse=True)
def one_thread(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLMI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def config(tiny_busi):
    data, split = tiny_busi

    def make(out: Path, **changes) -> TrainConfig:
        settings = dict(task="segmentation", dataset="busi", data_dir=str(data), split=str(split),
                        out=str(out), image_size=32, epochs=2, batch_size=4, base_channels=4, quiet=True,
                        device="cpu", lr=3e-3, loss="dice-bce")
        settings.update(changes)
        return TrainConfig(**settings)

    return make


def test_precision_choices_on_cpu() -> None:
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(DlmiError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(DlmiError, match="unknown precision 'fp8'"):
        TrainConfig(task="segmentation", dataset="x", out="x", precision="fp8").resolved()
    bf16 = Precision("bf16", CPU)
    with bf16.autocast():
        out = torch.nn.functional.conv2d(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 3, 3))
    assert out.dtype == torch.bfloat16 and bf16.scaler is None
    with Precision("fp32", CPU).autocast():
        out = torch.nn.functional.conv2d(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 3, 3))
    assert out.dtype == torch.float32


def test_bf16_channels_last_run_learns_and_saves_plain_weights(config, tmp_path: Path) -> None:
    run_dir = train_segmenter(config(tmp_path / "fast", precision="bf16", channels_last=True, epochs=3))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    runtime = json.loads((run_dir / "runtime.json").read_text())
    assert runtime["precision"] == "bf16" and runtime["channels_last"] is True
    assert runtime["processes"] == 1 and runtime["torch_threads"] == 1
    state = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())  # fp32 master weights
    assert all(v.is_contiguous() for v in state.values())  # saved in NCHW, whatever the training layout
    trained = load_trained(run_dir)  # a plain (NCHW, fp32) model takes them
    assert trained.model(torch.rand(1, 1, 32, 32)).dtype == torch.float32


def test_channels_last_is_a_layout_not_a_different_model(config, tmp_path: Path) -> None:
    """fp32 with and without channels-last: the same run up to rounding (first epoch's loss)."""
    a = train_segmenter(config(tmp_path / "nchw", precision="fp32", channels_last=False, epochs=1))
    b = train_segmenter(config(tmp_path / "nhwc", precision="fp32", channels_last=True, epochs=1))
    loss = [json.loads((r / "metrics.jsonl").read_text())["train_loss"] for r in (a, b)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-3)


def test_resume_keeps_the_precision_and_may_change_speed_settings(config, tmp_path: Path) -> None:
    run_dir = train_segmenter(config(tmp_path / "run", precision="fp32", epochs=1))
    with pytest.raises(DlmiError, match="cannot change precision"):
        resume_training(run_dir, epochs=2, precision="bf16")
    resume_training(run_dir, epochs=2, channels_last=False, cache="none")
    assert json.loads((run_dir / "runtime.json").read_text())["channels_last"] is False
    assert json.loads((run_dir / "config.json").read_text())["precision"] == "fp32"


@pytest.mark.slow
def test_cli_speed_flags(cli, tiny_busi, tmp_path: Path) -> None:
    data, split = tiny_busi
    out = tmp_path / "run"
    bad = cli("train", "segmenter", "--dataset", "synthetic", "--device", "cpu", "--precision", "fp16",
              "--out", str(out))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "dlmi: error: --precision fp16 needs a CUDA device; on the CPU use bf16 (or fp32)"]
    assert not out.exists()  # refused before the run folder was made
    bad = cli("train", "segmenter", "--dataset", "synthetic", "--cache", "ram", "--out", str(out))
    assert bad.returncode == 2 and "unknown cache 'ram'" in bad.stderr and "Traceback" not in bad.stderr
    done = cli("train", "segmenter", "--dataset", "busi", "--data-dir", str(data), "--split", str(split),
               "--device", "cpu", "--image-size", "32",
               "--base-channels", "4", "--epochs", "1", "--precision", "bf16", "--no-channels-last",
               "--cache", "none", "--quiet", "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["precision"] == "bf16" and runtime["channels_last"] is False
    assert runtime["cache"]["memory"] is False
    help_text = " ".join(cli("train", "segmenter", "--help").stdout.split())
    for flag in ("--precision", "--channels-last", "--compile", "--cache", "--sync-bn"):
        assert flag in help_text


@pytest.mark.slow
def test_compiled_run_saves_the_plain_state_dict(config, tmp_path: Path) -> None:
    """--compile trains; best.pt loads into the plain model.

    The seed CNN, not the U-Net: inductor compiles three graphs (training forward and backward, then the
    no-grad validation forward), one C++ build per fused kernel, so the time goes with the number of layers,
    not with the image size or width — on a cold inductor cache about 30 s of compiling here, the U-Net's
    about 60 s (a warm cache, /tmp/torchinductor_$USER, reuses them in a few seconds)."""
    run_dir = train_classifier(config(tmp_path / "compiled", task="classification", model="seed-cnn",
                                      image_size=64, base_channels=None, loss=None, epochs=1, compile=True))
    assert json.loads((run_dir / "runtime.json").read_text())["compile"] is True
    state = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    assert load_trained(run_dir).model(torch.rand(1, 1, 64, 64)).shape == (1, 3)


@pytest.mark.slow
def test_benchmark_script_runs_and_reports(tiny_busi, tmp_path: Path) -> None:
    """benchmarks/train_speed.py at toy settings: both tables, the data path, every variant measured."""
    import subprocess
    import sys

    data, _ = tiny_busi
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--data-dir", str(data), "--image-size", "32", "--base-channels", "4",
         "--batch-size", "4", "--images", "8", "--head-reps", "2", "--reps", "1", "--data-images", "8",
         "--threads", "1", "--skip-rss", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "train-speed-cpu.json").read_text())
    assert set(result["head_to_head"]) == {"reference", "dlmi defaults"}
    assert len(result["ablation"]) == 6 and result["torch_threads"] == 1
    assert all(len(v["images_per_s"]) == 2 and min(v["images_per_s"]) > 0
               for v in result["head_to_head"].values())
    assert result["head_to_head"]["reference"]["median_ratio_to_reference"] == 1.0
    assert all(rate > 0 for rate in result["data_path_images_per_s"].values())
    assert result["flops_per_image"]["forward_backward"] > 2 * result["flops_per_image"]["forward"]
    report = (tmp_path / "train-speed-cpu.md").read_text()
    assert "## Head to head" in report and "## Data path alone" in report
    assert f"real BUSI-layout image files in {data}" in report
