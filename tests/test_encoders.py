"""Pretrained ResNet encoders for ``unet`` / ``unet-mt`` (``--model-option encoder=… weights=…``): the
network, the weight-file checks, a 1-epoch run that records the weights, and its export with parity.

The weight files are built here: torchvision's ResNet state dicts with random values and the real key names
(no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from dlmi.cli.main import make_app
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.export.metadata import read_metadata
from dlmi.models import pretrained
from dlmi.models.resnet_unet_torch import GREY_MEAN, GREY_STD
from dlmi.plugins import create_model
from dlmi.runtime.trained import load_trained


def resnet_file(path: Path, encoder: str = "resnet18", seed: int = 0) -> Path:
    """A torchvision ``encoder`` state dict with random values, saved as a plain ``.pth`` file."""
    torch.manual_seed(seed)
    torch.save(getattr(torchvision.models, encoder)(weights=None).state_dict(), path)
    return path


def one_line(exc: pytest.ExceptionInfo[DlmiError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("model", ["unet", "unet-mt"])
def test_any_size_and_the_outputs_the_training_steps_expect(model: str) -> None:
    options = {"num_classes": 3} if model == "unet-mt" else {}
    net = create_model(model, encoder="resnet18", base_channels=4, **options).eval()
    out = net(torch.rand(2, 1, 37, 50))  # not a multiple of 32: padded inside, cropped back
    seg = out[0] if model == "unet-mt" else out
    assert seg.shape == (2, 1, 37, 50)
    if model == "unet-mt":
        assert out[1].shape == (2, 3)
        seg, cls, aux = net(torch.rand(2, 1, 40, 72), deep=True)
        # Deep supervision: the decoder's 1/8, 1/4, 1/2 levels of the input padded to 64 x 96.
        assert [tuple(a.shape[-2:]) for a in aux] == [(8, 12), (16, 24), (32, 48)]


def test_lesion_head_and_resnet34() -> None:
    net = create_model("unet-mt", num_classes=2, encoder="resnet34", base_channels=4, head="lesion").eval()
    seg, cls = net(torch.rand(1, 1, 64, 64))
    assert seg.shape == (1, 1, 64, 64) and cls.shape == (1, 2)


def test_a_state_dict_file_loads_with_the_grey_stem_and_its_sha256(tmp_path: Path) -> None:
    from dlmi.models.resnet import grey_stem

    path = resnet_file(tmp_path / "r18.pth")
    state = torch.load(path, weights_only=True)
    net = create_model("unet-mt", num_classes=3, encoder="resnet18", weights=str(path), base_channels=4)
    assert torch.equal(net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(net.stem[1].running_var, state["bn1.running_var"])
    # The grey stem is the RGB filters summed, made by resnet18's own helper.
    rgb = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    rgb.weight.data.copy_(state["conv1.weight"])
    assert torch.allclose(net.stem[0].weight, grey_stem(rgb).weight)
    assert torch.allclose(net.stem[0].weight, state["conv1.weight"].sum(1, keepdim=True))
    assert net.pretrained_weights == {"source": str(path), "file": str(path), "sha256": file_digest(path)}


def test_normalisation_is_inside_the_network(tmp_path: Path) -> None:
    """A grey image of value GREY_MEAN reaches the stem as 0: the ImageNet normalisation is the module's."""
    net = create_model("unet", encoder="resnet18", base_channels=4).eval()
    seen = []
    net.stem[0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    net(torch.full((1, 1, 32, 32), GREY_MEAN))
    assert seen[0].abs().max() < 1e-6
    net(torch.full((1, 1, 32, 32), GREY_MEAN + GREY_STD))
    assert torch.allclose(seen[1], torch.ones_like(seen[1]), atol=1e-5)


def test_bad_files_and_options_are_refused_in_one_line(tmp_path: Path) -> None:
    swapped = resnet_file(tmp_path / "r34.pth", "resnet34")
    with pytest.raises(DlmiError) as exc:
        create_model("unet", encoder="resnet18", weights=str(swapped))
    message = one_line(exc)
    assert str(swapped) in message and "unexpected keys" in message and "layer1.2." in message

    good = resnet_file(tmp_path / "r18.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DlmiError) as exc:
        create_model("unet", encoder="resnet18", weights=str(truncated))
    assert str(truncated) in one_line(exc) and "not a readable state-dict file" in str(exc.value)

    state = torch.load(good, weights_only=True)
    del state["layer4.1.bn2.bias"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    damaged = tmp_path / "damaged.pth"
    torch.save(state, damaged)
    with pytest.raises(DlmiError) as exc:
        create_model("unet-mt", num_classes=3, encoder="resnet18", weights=str(damaged))
    message = one_line(exc)
    assert "missing keys (layer4.1.bn2.bias)" in message and "layer1.0.conv1.weight [64, 64, 1, 1]" in message

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(DlmiError, match="not a state dict"):
        create_model("unet", encoder="resnet18", weights=str(not_a_state_dict))

    for options, expected in (
        ({"encoder": "resnet50"}, "unknown encoder 'resnet50'"),
        ({"weights": "imagenet"}, "needs an encoder"),
        ({"encoder": "resnet18", "weights": str(tmp_path / "absent.pth")}, "absent.pth does not exist"),
        ({"encoder": "resnet18", "bilinear": True}, "bilinear applies to the classic U-Net"),
    ):
        with pytest.raises(DlmiError) as exc:
            create_model("unet", **options)
        assert expected in one_line(exc)


def test_imagenet_file_is_read_from_torchvisions_cache_and_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = pretrained.imagenet_file("resnet18")
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(DlmiError) as exc:
        pretrained.load_encoder_weights("resnet18", "imagenet", download=False)
    message = one_line(exc)
    assert "resnet18-f37072fd.pth" in message and str(cached.parent) in message

    # Another file under torchvision's name: its SHA-256 does not start with f37072fd.
    cached.parent.mkdir(parents=True)
    resnet_file(cached)
    with pytest.raises(DlmiError) as exc:
        create_model("unet", encoder="resnet18", weights="imagenet")
    assert str(cached) in one_line(exc) and "f37072fd" in str(exc.value)

    # A file whose name carries its own hash prefix passes the same check and loads.
    digest = file_digest(cached)
    named = cached.parent / f"resnet18-{digest[:8]}.pth"
    cached.rename(named)
    monkeypatch.setattr(pretrained, "imagenet_url", lambda encoder: f"https://example.org/{named.name}")
    loaded = pretrained.load_encoder_weights("resnet18", "imagenet", download=False)
    assert loaded.record() == {"source": "imagenet", "file": str(named), "sha256": digest}


@pytest.mark.slow
def test_one_epoch_run_records_the_weights_and_exports_with_parity(tmp_path: Path) -> None:
    weights = resnet_file(tmp_path / "r18.pth")
    digest = file_digest(weights)
    app, runner = make_app(), CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "joint", "--dataset", "synthetic", "--image-size", "64", "--epochs", "1", "--base-channels",
        "4", "--batch-size", "8", "--device", "cpu", "--quiet", "--model-option", "encoder=resnet18",
        "--model-option", f"weights={weights}", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["pretrained_weights"]["sha256"] == digest
    assert config["model_options"] == {"encoder": "resnet18", "weights": str(weights)}

    weights.unlink()  # a trained run loads and exports without its starting weights
    trained = load_trained(run)
    assert trained.meta["pretrained_weights"]["sha256"] == digest
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", "onnx", "--segmenter", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("parity ok") == 3

    props = read_metadata(out / "unet.onnx")
    assert json.loads(props["segmenter_pretrained_weights"])["sha256"] == digest
    normalisation = json.loads(props["segmenter_input_normalisation"])
    assert normalisation["mean"] == pytest.approx(GREY_MEAN, abs=1e-6)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["segmenter"]["meta"]["pretrained_weights"]["sha256"] == digest
    assert manifest["segmenter"]["meta"]["input_normalisation"]["std"] == pytest.approx(GREY_STD, abs=1e-6)
    card = (out / "MODEL_CARD.md").read_text()
    assert digest in card and "segmenter normalisation: (x - mean) / std" in card

    # The plain-onnxruntime input (0-1 grey, as today) gives the torch model's mask.
    image = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(str(out / "unet.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"image": image})[0]
    with torch.no_grad():
        expected = torch.sigmoid(trained.model(torch.from_numpy(image))[0]).numpy()
    assert np.abs(probs - expected).max() < 1e-4


@pytest.mark.slow
def test_segmenter_with_an_encoder_trains_one_epoch(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), [
        "train", "segmenter", "--dataset", "synthetic", "--image-size", "48", "--epochs", "1",
        "--batch-size", "8", "--device", "cpu", "--quiet", "--model-option", "encoder=resnet18",
        "--out", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["pretrained_weights"] is None
    assert load_trained(tmp_path / "seg").model.base_channels == 16  # the encoder's default decoder width


def test_unknown_encoder_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), [
        "train", "joint", "--dataset", "synthetic", "--image-size", "32", "--epochs", "1", "--device", "cpu",
        "--quiet", "--model-option", "encoder=vgg", "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, DlmiError), result.output  # printed as one line by dlmi's main
    assert "unknown encoder 'vgg'" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_gpu_profile_uses_the_imagenet_encoder_only_when_its_file_is_cached(tmp_path: Path,
                                                                             monkeypatch) -> None:
    from dlmi.experiments.best import RECIPES, busi_encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    gpu, cpu = RECIPES["gpu"], RECIPES["cpu"]
    use, note = busi_encoder(gpu)
    assert not use and "resnet34-b627a593.pth is not there" in note
    assert "model_options" not in gpu.busi_settings(use) and gpu.busi_settings(use)["base_channels"] == 64

    cached = pretrained.imagenet_file("resnet34")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placed")  # present is what decides; the file is checked when the model is built
    use, note = busi_encoder(gpu)
    assert use and "encoder=resnet34 weights=imagenet" in note and str(cached) in note
    settings = gpu.busi_settings(use)
    assert settings["model_options"] == {"encoder": "resnet34", "weights": "imagenet"}
    assert settings["base_channels"] == 16

    assert cpu.encoder is None and busi_encoder(cpu)[0] is False  # the cpu profile is unchanged
    assert "model_options" not in cpu.busi_settings() and cpu.busi_settings()["base_channels"] == 16


@pytest.mark.slow
def test_encoder_comparison_benchmark_dry_run(tmp_path: Path) -> None:
    """benchmarks/encoder_comparison.py --dry-run: both models trained on the same folds, out-of-fold
    numbers with intervals, the weights' sha256 recorded."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_comparison.py"
    spec = importlib.util.spec_from_file_location("encoder_comparison", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.main(["--dry-run", "--threads", "1", "--work", str(tmp_path / "work"),
                        "--results", str(tmp_path / "results")])
    result = json.loads((tmp_path / "results" / "encoder-comparison-cpu.json").read_text())
    assert set(result["models"]) == {"unet-mt", "unet-mt-resnet18"} and result["dry_run"] is True
    encoder = result["models"]["unet-mt-resnet18"]
    assert encoder["model_options"]["encoder"] == "resnet18"
    assert encoder["pretrained_weights"]["sha256"] == file_digest(tmp_path / "work" / "resnet18-random.pth")
    for model in result["models"].values():
        accuracy = model["metrics"]["accuracy_3class"]
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"] and accuracy["n"] > 0
        assert model["metrics"]["lesion_dice"]["n"] > 0 and model["epochs"] >= 1
    assert result["difference"]["accuracy_3class"]["n"] == result["models"]["unet-mt"]["metrics"][
        "accuracy_3class"]["n"]
    assert "Paired difference" in path.read_text()
