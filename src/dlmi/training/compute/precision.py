"""Numeric precision of the forward pass (``--precision``): autocast and, for fp16, loss scaling.

``auto`` picks per device what measured (CPU) or is known (CUDA) to be fastest without hurting training:

* CUDA: bf16 autocast where the GPU supports bf16 (Ampere and newer), fp16 with a gradient scaler
  otherwise.
* CPU: bf16 autocast where the processor has native bf16 dot products (AVX-512 BF16 or AMX on x86,
  the BF16 extension on Arm), fp32 elsewhere: emulated bf16 is slower than fp32. Measured on an AMD EPYC
  with AVX-512 BF16, U-Net base 16 at 128², batch 8: 4.84 images/s in fp32 with channels-last, 9.62 with
  bf16 (``benchmarks/results/train-speed-cpu.md``, a noisy shared machine).

Weights, optimiser state, BatchNorm statistics and the loss stay fp32: the tasks cast the logits to fp32
before the loss, so a bf16 run differs from an fp32 run by rounding in the convolutions only.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlmi.errors import DlmiError
from dlmi.training.config import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (so bf16 autocast is faster than fp32)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    machine = platform.machine().lower()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    words = set(cpuinfo.split())
    if machine in ("x86_64", "amd64"):
        return bool(words & {"avx512_bf16", "amx_bf16"})
    if machine in ("aarch64", "arm64"):
        return "bf16" in words
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``--precision name`` on ``device``; a one-line error if unusable."""
    if name not in PRECISIONS:
        raise DlmiError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name == "fp16" and not cuda:
        raise DlmiError("--precision fp16 needs a CUDA device; on the CPU use bf16 (or fp32)")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise DlmiError("--precision bf16: this GPU has no bf16 support; use fp16 (or fp32)")
    return name


@dataclass
class Precision:
    """The resolved precision of a run: an autocast context and, for fp16, a gradient scaler."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.scaler: torch.amp.GradScaler | None = None
        if self.name == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.name])
