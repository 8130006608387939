"""Choosing where inference runs: onnxruntime execution providers and PyTorch devices.

``auto`` takes CUDA only where a GPU is really present, else the CPU. For onnxruntime, "present" is asked
of the NVIDIA driver itself (``cuInit`` and ``cuDeviceGetCount`` through ctypes), so choosing a provider
imports no torch; the torch backend's device is :func:`dlmi.runtime.device.resolve_device` (PyTorch's own
``torch.cuda.is_available()``), as for training and evaluation. ``cuda`` without a working GPU
is an error — never a silent fall back to the CPU: onnxruntime itself falls back when the CUDA provider
fails to load, so the providers a session actually got are checked. onnxruntime finds the CUDA and cuDNN
libraries of PyTorch's wheels through ``onnxruntime.preload_dlls()``, not by importing torch first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from dlmi.errors import DlmiError, warn
from dlmi.machine import machine_cpus

if TYPE_CHECKING:
    import torch

PROVIDER_CHOICES = ("auto", "cuda", "cpu")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def _check_choice(choice: str) -> str:
    if choice not in PROVIDER_CHOICES:
        raise DlmiError(f"--provider {choice}: expected one of {', '.join(PROVIDER_CHOICES)}")
    return choice


_DRIVER_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


@cache
def cuda_device_count() -> int:
    """CUDA GPUs the NVIDIA driver reports here (honouring ``CUDA_VISIBLE_DEVICES``); 0 without a driver."""
    for name in _DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def wants_cuda(choice: str) -> bool:
    """Whether ``choice`` runs onnxruntime on CUDA here; ``cuda`` without a GPU is an error. (The torch
    backend's device is :func:`torch_device`: :func:`dlmi.runtime.device.resolve_device`, the one rule.)"""
    choice = _check_choice(choice)
    if choice == "cpu":
        return False
    available = cuda_device_count() > 0
    if choice == "cuda" and not available:
        raise DlmiError("--provider cuda: no CUDA GPU is available here (the NVIDIA driver lists none); "
                        "use --provider cpu or auto")
    return available


def torch_device(choice: str) -> torch.device:
    """The PyTorch device for a provider choice (:func:`dlmi.runtime.device.resolve_device`)."""
    from dlmi.runtime.device import resolve_device

    return resolve_device(_check_choice(choice), option="--provider")



def clamp_threads(threads: int | None, *, quiet: bool = False) -> int | None:
    """``--threads`` within the machine: more threads than CPUs only contend (thousands hang the process),
    so a larger number is cut to the CPU count, with a warning unless ``quiet``. ``None``/0: the default."""
    if not threads:
        return None
    if threads < 0:
        raise DlmiError(f"--threads {threads}: must be 0 (the default) or more")
    cpus = machine_cpus()
    if threads > cpus:
        if not quiet:
            warn(f"--threads {threads}: this machine has {cpus} CPUs; using {cpus}")
        return cpus
    return int(threads)


def session_options(threads: int | None = None, *, spin: bool = False):  # -> onnxruntime.SessionOptions
    """Session options: all graph optimisations, quiet logs, ``threads`` intra-op threads (0: default).

    Worker threads do not spin-wait between calls unless ``spin``: during ``dlmi predict`` the CPU is
    shared with the thread that decodes the next batch, and spinning threads would take it
    (``benchmarks/predict.py``: equal speed on a quiet 2-core machine, slightly faster under load).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = int(threads or 0)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: str | os.PathLike[str], choice: str, threads: int | None = None):
    """An onnxruntime session on the chosen provider, verified to really run there."""
    import onnxruntime as ort

    path = Path(path)
    cuda = wants_cuda(choice)
    if cuda:
        if hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):  # the providers check below reports what is missing
                ort.preload_dlls()
        if CUDA_EP not in ort.get_available_providers():
            if choice == "cuda":
                raise DlmiError(
                    f"--provider cuda: this onnxruntime has no CUDA provider "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
                )
            cuda = False
    providers = [CUDA_EP, CPU_EP] if cuda else [CPU_EP]
    ort.set_default_logger_severity(3)
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlmiError(f"{path}: onnxruntime cannot load it ({first})") from None
    if choice == "cuda" and session.get_providers()[0] != CUDA_EP:
        raise DlmiError(f"{path}: --provider cuda: onnxruntime could not start its CUDA provider "
                        f"(CUDA or cuDNN libraries missing?); it would run on {session.get_providers()[0]}")
    return session
