"""Pretrained ResNet encoder weights for ``unet`` / ``unet-mt`` (``--model-option encoder=… weights=…``).

``weights=imagenet`` is torchvision's ImageNet file for the encoder (``resnet18-f37072fd.pth``,
``resnet34-b627a593.pth``), read from torchvision's cache (``torch.hub.get_dir()/checkpoints``) and fetched
by torchvision into that cache only where it is not there yet, so a machine without a network works once the
file is placed in that folder. ``weights=PATH`` is any state-dict file of the same torchvision architecture.

What is checked before a weight is used, each failure one line naming the file:

- an ``imagenet`` file: the SHA-256 of the whole file must start with the hex digits torchvision puts in the
  file's name (8 hex digits, i.e. the first 32 bits of the SHA-256 that torchvision published for it); this
  catches a truncated, corrupted or swapped file, not a forged one;
- every file: it loads with ``torch.load(weights_only=True)`` as a dict of tensors, and its keys and shapes
  are exactly those of ``torchvision.models.<encoder>(weights=None).state_dict()`` (the ``fc.*`` classifier
  keys may be present or absent; they are not used).

The weights' source and SHA-256 (:class:`EncoderWeights`) are recorded in the run's ``config.json``
(``pretrained_weights``), the checkpoint meta, ``export.json`` and the model card.

This module imports torch only when weights are loaded; :func:`check_encoder_options` is torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlmi.digest import file_digest
from dlmi.errors import DlmiError

ENCODERS = ("resnet18", "resnet34")
IMAGENET = "imagenet"
# torchvision's hash-in-name rule (torch.hub's HASH_REGEX): the hex digits between the last '-' and the '.'.
_NAME_HASH = re.compile(r"-([a-f0-9]+)\.")
# The classifier's keys: an encoder does not use them, so a file may or may not have them.
_UNUSED_PREFIX = "fc."


@dataclass(frozen=True)
class EncoderWeights:
    """A checked encoder state dict, and what it came from."""

    state_dict: dict[str, Any]
    source: str  # "imagenet" or the file's path as given
    file: str  # the file read
    sha256: str

    def record(self) -> dict[str, str]:
        """The JSON-able record kept in config.json, the checkpoint meta, export.json and the model card."""
        return {"source": self.source, "file": self.file, "sha256": self.sha256}


def check_encoder_options(model: str, encoder: object, weights: object) -> None:
    """The encoder options of ``model`` (``unet`` / ``unet-mt``), checked without torch: one line each."""
    if encoder is None:
        if weights is not None:
            raise DlmiError(f"{model}: weights={weights!r} needs an encoder (encoder=resnet18 or resnet34)")
        return
    if encoder not in ENCODERS:
        raise DlmiError(f"{model}: unknown encoder {encoder!r}; expected one of {', '.join(ENCODERS)}")
    if weights is None or weights == IMAGENET:
        return
    if not isinstance(weights, str | os.PathLike):
        raise DlmiError(f"{model}: weights must be 'imagenet' or a state-dict file, got {weights!r}")
    if not Path(weights).is_file():
        raise DlmiError(f"{model}: weights file {weights} does not exist (give imagenet or a state dict)")


def _imagenet_weights(encoder: str) -> Any:
    """torchvision's ``IMAGENET1K_V1`` weights entry of ``encoder``."""
    from torchvision.models import ResNet18_Weights, ResNet34_Weights

    return {"resnet18": ResNet18_Weights, "resnet34": ResNet34_Weights}[encoder].IMAGENET1K_V1


def imagenet_url(encoder: str) -> str:
    """torchvision's download address of ``encoder``'s ImageNet weights (IMAGENET1K_V1)."""
    return str(_imagenet_weights(encoder).url)


def imagenet_file(encoder: str) -> Path:
    """Where torchvision caches ``encoder``'s ImageNet file: ``torch.hub.get_dir()/checkpoints/NAME``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / imagenet_url(encoder).rsplit("/", 1)[-1]


def load_encoder_weights(encoder: str, weights: str | os.PathLike[str], *,
                         download: bool = True) -> EncoderWeights:
    """``encoder``'s weights from ``imagenet`` (torchvision's cache, downloaded there when absent and
    ``download``) or a state-dict file, checked as the module docstring says."""
    if encoder not in ENCODERS:
        raise DlmiError(f"unknown encoder {encoder!r}; expected one of {', '.join(ENCODERS)}")
    if weights == IMAGENET:
        path = imagenet_file(encoder)
        if not path.is_file():
            _fetch_imagenet(encoder, path, download)
        digest = file_digest(path)
        named = _NAME_HASH.search(path.name)
        prefix = named.group(1) if named else "?"
        if not digest.startswith(prefix):
            raise DlmiError(f"{path}: SHA-256 {digest[:12]}… does not start with {prefix}, the hash in "
                            "torchvision's file name (a truncated, corrupted or different file); delete it "
                            "and fetch it again")
        source = IMAGENET
    else:
        path = Path(weights)
        if not path.is_file():
            raise DlmiError(f"{path}: weights file does not exist")
        digest, source = file_digest(path), os.fspath(weights)
    state_dict = _read_state_dict(path)
    check_state_dict(state_dict, encoder, path)
    return EncoderWeights(state_dict=state_dict, source=source, file=str(path), sha256=digest)


def _fetch_imagenet(encoder: str, path: Path, download: bool) -> None:
    """Let torchvision download ``encoder``'s ImageNet file into its cache; one line when it cannot."""
    placed = (f"place {path.name} (from {imagenet_url(encoder)}) in {path.parent} to use it without a "
              "network")
    if not download:
        raise DlmiError(f"{path}: torchvision's ImageNet weights for {encoder} are not in its cache; "
                        + placed)
    try:  # torchvision's own loader: into torch.hub's cache, checking the hash in the file's name
        _imagenet_weights(encoder).get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network, a proxy, a partial download: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlmiError(f"{path}: torchvision could not download the ImageNet weights for {encoder} "
                        f"({first}); {placed}") from None
    if not path.is_file():
        raise DlmiError(f"{path}: torchvision's download left no file there; {placed}")


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlmiError(f"{path}: not a readable state-dict file ({first[:160]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DlmiError(f"{path}: not a state dict (a dict of tensors), got {type(data).__name__}")
    return data


def check_state_dict(state_dict: dict[str, Any], encoder: str, path: str | os.PathLike[str]) -> None:
    """Keys and shapes exactly torchvision's ``encoder`` (``fc.*`` optional); one line naming the first
    missing, unexpected or mis-shaped keys."""
    import torchvision

    reference = getattr(torchvision.models, encoder)(weights=None).state_dict()
    wanted = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith(_UNUSED_PREFIX)}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(_UNUSED_PREFIX)}
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    shapes = sorted(k for k in set(wanted) & set(given) if wanted[k] != given[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} keys of another shape ("
                        + ", ".join(f"{k} {list(given[k])} vs {list(wanted[k])}" for k in shapes[:3])
                        + (", …" if len(shapes) > 3 else "") + ")")
    if problems:
        raise DlmiError(f"{path}: not torchvision {encoder} weights: " + "; ".join(problems))


def _few(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")
