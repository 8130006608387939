"""The from-scratch classifier alternative ``resnet18`` (torchvision's ResNet-18 on one grey channel)."""

from __future__ import annotations

import pytest
import torch

from dlmi.errors import DlmiError
from dlmi.plugins import create_model, get_plugins


def test_registered_as_a_classifier_built_without_weights():
    entry = get_plugins().models.get("resnet18")
    assert entry.task == "classification" and entry.source == "built-in"
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, image_size=96)
    assert model.conv1.in_channels == 1
    logits = model(torch.rand(2, 1, 96, 80))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    # From scratch: two builds with different seeds differ (no pretrained weights were loaded).
    torch.manual_seed(1)
    other = create_model("resnet18", num_classes=3)
    assert not torch.equal(model.conv1.weight, other.conv1.weight)


def test_dropout_head_and_bad_options():
    model = create_model("resnet18", num_classes=2, dropout=0.2)
    assert isinstance(model.fc, torch.nn.Sequential) and model.fc[0].p == 0.2
    with pytest.raises(DlmiError, match="weights must be none or 'imagenet'"):
        create_model("resnet18", num_classes=2, weights="coco")
    with pytest.raises(DlmiError, match="num_classes"):
        create_model("resnet18", num_classes=0)
