"""Per-image uncertainty: how much the votes behind one prediction disagree. The one implementation.

The **votes** of a model are what it averages, or could: a fold ensemble's members (each the mean over its
flip-TTA views, :meth:`dlmi.runtime.ensemble.JointEnsemble.member_outputs`), or, for a single network,
its plain pass and its pass on the horizontally mirrored image (the mirrored mask flipped back). The
prediction itself is unchanged: the ensemble's mean, or the single network's plain pass.

- ``uncertainty``: the spread of the votes' probability of the reference class — the normal class (the
  class of the gate; the arg-max class of the mean where the model has no normal class), each vote's
  probabilities temperature-scaled like the reported ones (``softmax(log p / T)``). An ensemble: their
  standard deviation over the members (population, ``ddof = 0``); a single network:
  ``|P_plain − P_mirrored|``.
- ``mask_disagreement``: ``1 − mean pairwise Dice`` of the votes' binary masks (probability above the model's
  own threshold, at the model's input size, before the gate); two empty masks agree (Dice 1). An ensemble:
  over its ``M (M − 1) / 2`` member pairs; a single network: ``1 − Dice(plain, mirrored)``.

Both are 0 where the votes agree. They are computed inside the exported graphs (``two_stage.onnx``:
both; ``classifier.onnx``: ``uncertainty``), so both backends give the same values.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

_EPS = 1e-6


def averages_members(net: Any) -> bool:
    """Whether ``net`` (possibly wrapped: fp16, one output of a joint network) is a fold ensemble."""
    return bool(getattr(net, "averages_members", False))


def mirrored(image: torch.Tensor) -> torch.Tensor:
    return torch.flip(image, dims=[-1])


def class_votes(net: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A class head ``net(image) -> logits``: (logits (N,K) of its prediction, votes (V,N,K) probabilities,
    whether the votes are ensemble members)."""
    from dlmi.runtime.ensemble import mean_class_logits

    if averages_members(net):
        votes = net.member_outputs(image)
        return mean_class_logits(votes), votes, True
    logits = net(image).float()
    flipped = net(mirrored(image)).float()
    return logits, torch.stack([torch.softmax(logits, dim=1), torch.softmax(flipped, dim=1)]), False


def mask_votes(net: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A segmenter ``net(image) -> logits``: (logits (N,1,H,W) of its plain pass, votes (2,N,1,H,W): the
    plain and the mirrored pass's probabilities, the mirrored one flipped back)."""
    logits = net(image).float()
    flipped = torch.flip(torch.sigmoid(net(mirrored(image)).float()), dims=[-1])
    return logits, torch.stack([torch.sigmoid(logits), flipped])


def joint_votes(model: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor, bool]:
    """A joint network ``model(image) -> (seg_logits, class_logits)`` (or an ensemble of them): (seg logits,
    class logits, mask votes (V,N,1,H,W), class votes (V,N,K), whether the votes are ensemble members)."""
    from dlmi.runtime.ensemble import mean_class_logits, mean_mask_logits

    if averages_members(model):
        masks, classes = model.member_outputs(image)
        return mean_mask_logits(masks), mean_class_logits(classes), masks, classes, True
    seg_logits, class_logits = (t.float() for t in model(image)[:2])
    seg_flipped, class_flipped = (t.float() for t in model(mirrored(image))[:2])
    masks = torch.stack([torch.sigmoid(seg_logits), torch.flip(torch.sigmoid(seg_flipped), dims=[-1])])
    classes = torch.stack([torch.softmax(class_logits, dim=1), torch.softmax(class_flipped, dim=1)])
    return seg_logits, class_logits, masks, classes, False


def probability_spread(votes: torch.Tensor, reference: int | None, temperature: float,
                       ensemble: bool) -> torch.Tensor:
    """(N,) ``uncertainty`` of (V,N,K) vote probabilities (see the module's definition)."""
    scaled = torch.softmax(torch.log(votes.clamp(_EPS, 1.0)) / float(temperature), dim=2)
    if reference is None:
        index = scaled.mean(0).argmax(1).view(1, -1, 1).expand(scaled.shape[0], -1, 1)
        chosen = torch.gather(scaled, 2, index)[..., 0]
    else:
        chosen = scaled[:, :, int(reference)]
    if ensemble:
        centred = chosen - chosen.mean(0, keepdim=True)
        return torch.sqrt((centred * centred).mean(0))
    return torch.abs(chosen[0] - chosen[-1])


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Dice of two bool (N,…) masks; 1 where both are empty."""
    dims = tuple(range(1, a.dim()))
    both = (a & b).sum(dims).float()
    total = (a.sum(dims) + b.sum(dims)).float()
    return torch.where(total > 0, 2.0 * both / total.clamp(min=1.0), torch.ones_like(total))


def mask_disagreement(votes: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) ``1 − mean pairwise Dice`` of (V,N,1,H,W) vote probabilities cut at ``threshold``."""
    masks = votes > float(threshold)
    pairs = list(itertools.combinations(range(masks.shape[0]), 2))
    if not pairs:
        return torch.zeros(masks.shape[1], device=votes.device)
    total = dice(masks[pairs[0][0]], masks[pairs[0][1]])
    for i, j in pairs[1:]:
        total = total + dice(masks[i], masks[j])
    return 1.0 - total / float(len(pairs))
