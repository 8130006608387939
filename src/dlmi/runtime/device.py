"""The one place a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) becomes a ``torch.device``.

``auto`` is the GPU when PyTorch sees one, else the CPU; asking for CUDA where there is none is an error,
never a silent fall back. Training under torchrun adds its per-process rule on top
(:func:`dlmi.training.compute.distributed.resolve_device`); the torch prediction backend passes
``--provider``.
"""

from __future__ import annotations

import torch

from dlmi.errors import DlmiError


def resolve_device(name: str, *, option: str = "--device") -> torch.device:
    """The device for ``option name``; ``option`` only names the flag in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DlmiError(f"{option} {name}: no CUDA GPU is available here (torch.cuda.is_available() is "
                        f"False); use {option} cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DlmiError(f"{option} {name}: not a device name (auto, cpu, cuda or cuda:N)") from None
