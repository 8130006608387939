"""The built-in losses through the registry: dice, bce, mse, dice-bce, cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from dlmi.errors import DlmiError
from dlmi.plugins import load_plugins
from dlmi.runtime.gating import EMPTY_LOGIT

SURE = 30.0  # a logit whose sigmoid is 1 - 1e-13: a confident prediction


@pytest.fixture(scope="module")
def losses():
    return load_plugins().losses


def disc_masks(radii: list[int], size: int = 32) -> torch.Tensor:
    """(N, 1, size, size) float masks of centred discs (radius 0 = empty mask)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist2 = (yy - size / 2) ** 2 + (xx - size / 2) ** 2
    return torch.stack([(dist2 < r * r).float() for r in radii])[:, None]


def confident_logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0.5, SURE, -SURE)


def test_registered_with_their_tasks(losses):
    assert {"bce", "dice", "dice-bce", "mse"} <= set(losses.names(task="segmentation"))
    assert "cross-entropy" in losses.names(task="classification")
    assert losses.get("dice").source == "built-in"


@pytest.mark.parametrize("name", ["dice", "bce", "mse", "dice-bce"])
def test_perfect_prediction_gives_about_zero(losses, name):
    target = disc_masks([5, 9, 0])
    assert float(losses.create(name)(confident_logits(target), target)) == pytest.approx(0.0, abs=1e-6)


def test_dice_of_empty_target_and_empty_prediction_is_zero(losses):
    target = torch.zeros(2, 1, 16, 16)
    loss = losses.create("dice")(torch.full_like(target, -SURE), target)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_dice_of_a_completely_wrong_prediction_is_about_one(losses):
    target = disc_masks([12, 12])
    loss = float(losses.create("dice")(confident_logits(1.0 - target), target))
    # Dice = (0 + 1) / (area + (1024 - area) + 1) = 1/1025 with smooth = 1.
    assert loss == pytest.approx(1.0 - 1.0 / 1025.0, abs=1e-5)


def test_dice_is_per_image_then_batch_mean(losses):
    """The batch loss equals the mean of the single-image losses, whatever the lesion sizes."""
    torch.manual_seed(0)
    target = disc_masks([2, 6, 14, 0])
    logits = torch.randn(4, 1, 32, 32) * 3
    dice = losses.create("dice")
    batch = dice(logits, target)
    singles = torch.stack([dice(logits[i:i + 1], target[i:i + 1]) for i in range(4)])
    assert torch.allclose(batch, singles.mean(), atol=1e-6)
    # ... which is not what pooling every pixel of the batch into one Dice would give.
    p = torch.sigmoid(logits)
    pooled = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert abs(float(pooled) - float(batch)) > 0.01


def test_dice_accepts_a_mask_without_channel_dimension_and_bool_masks(losses):
    target = disc_masks([6, 3])
    logits = torch.randn(2, 1, 32, 32)
    dice = losses.create("dice")
    assert torch.allclose(dice(logits, target[:, 0].bool()), dice(logits, target))


def test_mismatched_target_is_a_one_line_error(losses):
    with pytest.raises(DlmiError, match=r"target shape \(2, 1, 8, 8\) does not match logits shape"):
        losses.create("dice")(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 8, 8))


def test_bce_and_mse_of_undecided_logits(losses):
    """Logit 0 is probability 0.5: BCE is ln 2 and the squared error 0.25 for any mask."""
    target = disc_masks([7, 0])
    logits = torch.zeros_like(target)
    assert float(losses.create("bce")(logits, target)) == pytest.approx(math.log(2), abs=1e-6)
    assert float(losses.create("mse")(logits, target)) == pytest.approx(0.25, abs=1e-6)


def test_dice_bce_is_the_sum_of_the_two(losses):
    torch.manual_seed(1)
    target = disc_masks([4, 10])
    logits = torch.randn_like(target)
    total = losses.create("dice-bce")(logits, target)
    parts = losses.create("dice")(logits, target) + losses.create("bce")(logits, target)
    assert torch.allclose(total, parts)
    half = losses.create("dice-bce", dice_weight=0.5, bce_weight=0.5)(logits, target)
    assert torch.allclose(half, parts / 2)


@pytest.mark.parametrize("name", ["dice", "bce", "mse", "dice-bce"])
def test_gated_logits_give_finite_loss_and_gradients(losses, name):
    """The classifier gate sets logits to -1e4; every loss stays finite there."""
    target = disc_masks([0, 5])
    logits = torch.randn_like(target)
    logits.data[0] = EMPTY_LOGIT
    logits.requires_grad_(True)
    loss = losses.create(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_cross_entropy_class_weights(losses):
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    plain = losses.create("cross-entropy")
    assert float(plain(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))) == pytest.approx(math.log(3), abs=1e-6)
    # A class with weight 0 drops out: the loss is that of the other sample alone.
    weighted = losses.create("cross-entropy", class_weights=[1.0, 1.0, 0.0])
    assert torch.allclose(weighted(logits, labels), plain(logits[:1], labels[:1]))
    # The weights are a buffer: they follow the module to another device or dtype.
    assert any(name == "weight" for name, _ in weighted.named_buffers())


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], []])
def test_cross_entropy_rejects_bad_weights(losses, weights):
    with pytest.raises(DlmiError, match="class weights"):
        losses.create("cross-entropy", class_weights=weights)
