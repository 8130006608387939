"""Shared by the export and predict tests (no tests here): small checkpoints of the real registered
``seed-cnn`` and ``unet`` in the run-folder checkpoint format, and one cached export of them per session.

The classifier is given weights that make its gate depend on the image: every convolution and linear
layer averages its inputs (constant positive weights, no bias, identity batch norm), so the features
measure the image's brightness, and the last layer says *normal* when that is below ``DARK``. A dark
image is therefore gated (empty mask) and a bright one is not, so one export tests both branches.
The U-Net keeps random weights plus an output bias, so ungated images get non-empty masks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dlmi.plugins import create_model
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.runtime.trained import build_meta

CLASSES = ("normal", "benign", "malignant")
CLASSIFIER_SIZE = 64
SEGMENTER_SIZE = 32
BASE_CHANNELS = 4
DARK = 0.12  # brightness (0–1) below which the classifier says normal
UNET_OUTPUT_BIAS = 2.0


def brightness_classifier(image_size: int = CLASSIFIER_SIZE) -> nn.Module:
    """seed-cnn whose arg-max is *normal* for dark images and *benign* for bright ones."""
    model = create_model("seed-cnn", num_classes=len(CLASSES), image_size=image_size)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
        for linear in linears[:-1]:
            linear.weight.fill_(1.0 / linear.in_features)
            linear.bias.zero_()
        last = linears[-1]
        last.weight.zero_()
        last.bias.zero_()
        # normal: 20 * (DARK - brightness); benign: 0; malignant: -1
        last.weight[0].fill_(-20.0 / last.in_features)
        last.bias[0] = 20.0 * DARK
        last.bias[2] = -1.0
    return model.eval()


def segmenter(base_channels: int = BASE_CHANNELS, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("unet", base_channels=base_channels)
    with torch.no_grad():
        model.outc.bias.fill_(UNET_OUTPUT_BIAS)
    return model.eval()


def make_checkpoints(folder: Path, *, normal_class: str | None = "normal") -> tuple[Path, Path]:
    """``folder/classifier.pt`` and ``folder/segmenter.pt`` with the documented ``meta``."""
    folder.mkdir(parents=True, exist_ok=True)
    cls_meta = build_meta(task="classification", model="seed-cnn", model_options={}, num_classes=len(CLASSES),
                          classes=CLASSES, normal_class=normal_class, image_size=CLASSIFIER_SIZE,
                          dataset="busi", run_dir=str(folder / "cls-run"))
    seg_meta = build_meta(task="segmentation", model="unet", model_options={"base_channels": BASE_CHANNELS},
                          num_classes=1, classes=[], normal_class=None, image_size=SEGMENTER_SIZE,
                          dataset="busi", run_dir=str(folder / "seg-run"), threshold=0.5)
    cls_path = save_checkpoint(folder / "classifier.pt", {"model": brightness_classifier().state_dict(),
                                                          "meta": cls_meta, "epoch": 1})
    seg_path = save_checkpoint(folder / "segmenter.pt", {"model": segmenter().state_dict(),
                                                         "meta": seg_meta, "epoch": 1})
    return cls_path, seg_path


def exported_models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(export folder, classifier.pt, segmenter.pt), exported once per test session (fp32)."""
    from dlmi.export.onnx_export import export_onnx

    base = tmp_path_factory.getbasetemp() / "dlmi-export-cache"
    checkpoints, models = base / "checkpoints", base / "models"
    cls_path, seg_path = checkpoints / "classifier.pt", checkpoints / "segmenter.pt"
    if not (models / "export.json").is_file():
        cls_path, seg_path = make_checkpoints(checkpoints)
        export_onnx(cls_path, seg_path, models)
    return models, cls_path, seg_path
