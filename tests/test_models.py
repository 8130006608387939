"""The built-in models (seed-cnn, unet) through the registry, and ``dlmi model summary``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dlmi.errors import DlmiError
from dlmi.models.summary import summarize_module, summarize_registered
from dlmi.plugins import load_plugins

# The reference report's torchsummary table for its CNN (`seed-cnn`) at 512×512, 3 classes.
REFERENCE_TOTAL_PARAMS = 5_238_147


@pytest.fixture(scope="module")
def models():
    return load_plugins().models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_builtin_models_are_registered_with_their_task(models):
    assert models.get("seed-cnn").meta["task"] == "classification"
    assert models.get("unet").meta["task"] == "segmentation"
    assert models.get("unet").source == "built-in"


@pytest.mark.parametrize(("image_size", "num_classes"), [(128, 2), (256, 3), (512, 3)])
def test_seed_cnn_output_shape(models, image_size, num_classes):
    model = models.create("seed-cnn", num_classes=num_classes, image_size=image_size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, image_size, image_size))
    assert out.shape == (2, num_classes)
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 256 * (image_size // 64) ** 2


def test_seed_cnn_has_the_reference_reports_parameter_count(models):
    assert n_params(models.create("seed-cnn", num_classes=3, image_size=512)) == REFERENCE_TOTAL_PARAMS


def test_seed_cnn_layers_follow_the_report(models):
    model = models.create("seed-cnn", num_classes=3, image_size=128)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 64), (64, 128), (128, 256)]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) and c.padding == (2, 2) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256 * 4, 256), (256, 64), (64, 3)]


@pytest.mark.parametrize("image_size", [32, 100, 0])
def test_seed_cnn_rejects_image_sizes_it_cannot_shrink_64_fold(models, image_size):
    with pytest.raises(DlmiError, match="multiple of 64"):
        models.create("seed-cnn", num_classes=3, image_size=image_size)


@pytest.mark.parametrize("size", [(64, 64), (100, 75), (17, 3), (1, 1)])
def test_unet_output_has_the_input_size(models, size):
    model = models.create("unet", in_channels=1, out_channels=1, base_channels=4).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)


def test_unet_padding_does_not_change_a_multiple_of_16(models):
    """On a 32×48 input the padding is zero: the output equals running the layers without it."""
    model = models.create("unet", base_channels=4).eval()
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        x1 = model.inc(x)
        x2 = model.down1(x1)
        x3 = model.down2(x2)
        x4 = model.down3(x3)
        y = model.up1(model.down4(x4), x4)
        manual = model.outc(model.up4(model.up3(model.up2(y, x3), x2), x1))
        assert torch.equal(model(x), manual)


def test_unet_base_channels_sets_every_level(models):
    small = models.create("unet", base_channels=4)
    large = models.create("unet", base_channels=8)
    first = [m for m in small.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.out_channels == 4
    widest = max(m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d))
    assert widest == 16 * 4
    # Convolution weights scale with channels squared.
    assert 3.5 < n_params(large) / n_params(small) < 4.1


@pytest.mark.parametrize("bilinear", [False, True])
def test_unet_upsampling_modes(models, bilinear):
    model = models.create("unet", base_channels=4, bilinear=bilinear).eval()
    has_transposed = any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    has_upsample = any(isinstance(m, nn.Upsample) for m in model.modules())
    assert (has_transposed, has_upsample) == (not bilinear, bilinear)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 40, 24)).shape == (1, 1, 40, 24)


def test_unet_defaults_to_transposed_convolution_and_bilinear_is_smaller(models):
    default = models.create("unet", base_channels=8)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in default.modules())
    assert n_params(models.create("unet", base_channels=8, bilinear=True)) < n_params(default)


def test_unet_trains_one_step(models):
    """Gradients reach the first convolution through the padding, the skips and the crop."""
    model = models.create("unet", base_channels=4)
    out = model(torch.rand(2, 1, 20, 30))
    out.mean().backward()
    first = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.weight.grad is not None and float(first.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("option", [{"base_channels": 0}, {"in_channels": -1}])
def test_unet_rejects_bad_options(models, option):
    with pytest.raises(DlmiError, match="unet"):
        models.create("unet", **option)


@pytest.mark.slow
@pytest.mark.parametrize("bilinear", [False, True])
def test_unet_exports_to_onnx_with_dynamic_height_and_width(models, tmp_path, bilinear):
    import onnxruntime as ort

    model = models.create("unet", base_channels=4, bilinear=bilinear).eval()
    path = tmp_path / "unet.onnx"
    dims = {0: torch.export.Dim("batch", min=1, max=16), 2: torch.export.Dim("height", min=1, max=2048),
            3: torch.export.Dim("width", min=1, max=2048)}
    torch.onnx.export(model, (torch.rand(2, 1, 64, 48),), str(path), dynamo=True,
                      input_names=["image"], output_names=["logits"], dynamic_shapes={"x": dims})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(100, 75), (64, 48), (17, 3)]:
        x = torch.rand(1, 1, *size)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert out.shape == (1, 1, *size)
        np.testing.assert_allclose(out, expected, atol=1e-4)


def test_summary_counts_macs_of_conv_transposed_conv_and_linear():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 8·8 outputs × 4 channels × (1 × 3 × 3) = 2,304
        nn.ConvTranspose2d(4, 2, 2, stride=2),  # 8·8 inputs × 4 channels × (2 × 2 × 2) = 2,048
        nn.Flatten(),
        nn.Linear(2 * 16 * 16, 5),  # 512 × 5 = 2,560
    )
    summary = summarize_module(model, (1, 1, 8, 8))
    assert [row.macs for row in summary.layers] == [2304, 2048, 0, 2560]
    assert summary.macs == 2304 + 2048 + 2560
    shapes = [row.output_shape for row in summary.layers]
    assert shapes == [[-1, 4, 8, 8], [-1, 2, 16, 16], [-1, 512], [-1, 5]]
    assert summary.output_shape == [-1, 5]
    assert summary.total_params == n_params(model)
    assert [row.params for row in summary.layers] == [40, 34, 0, 2565]


def test_summary_cli_reproduces_the_reference_table(cli):
    result = cli("model", "summary", "seed-cnn", "--num-classes", "3", "--image-size", "512")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Total params: 5,238,147" in out
    # The seed report's torchsummary figures for the same model and input.
    for line in ("Conv2d-1", "[-1, 64, 256, 256]", "Linear-13", "4,194,560", "Input size (MB): 1.00",
                 "Forward/backward pass size (MB): 118.63", "Params size (MB): 19.98",
                 "Estimated Total Size (MB): 139.61", "GFLOPs"):
        assert line in out, line


def test_summary_cli_json_for_unet(cli, models):
    result = cli("model", "summary", "unet", "--image-size", "40", "--base-channels", "4", "--bilinear",
                 "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    model = models.create("unet", base_channels=4, bilinear=True)
    assert data["total_params"] == n_params(model)
    assert data["options"]["base_channels"] == 4 and data["options"]["bilinear"] is True
    assert data["layers"][0]["output_shape"] == [-1, 4, 48, 48]  # padded up to a multiple of 16
    assert data["layers"][-1]["output_shape"] == [-1, 1, 48, 48]  # the last layer, before the crop
    assert data["output_shape"] == [-1, 1, 40, 40]
    assert data["gflops"] > 0 and "gflops" in data["definitions"]


def test_summary_cli_mistake_is_a_one_line_error(cli):
    result = cli("model", "summary", "seed-cnn", "--image-size", "100")
    assert result.returncode == 2
    assert "multiple of 64" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [("unet", {"num_classes": 3}, "takes no option num_classes"),
     ("seed-cnn", {"base_channels": 8}, "takes no option base_channels"),
     ("no-such-model", {}, "unknown model 'no-such-model'")],
)
def test_summary_rejects_options_the_model_does_not_take(name, options, message):
    with pytest.raises(DlmiError, match=message):
        summarize_registered(name, image_size=64, **options)
