"""One run over several processes: torchrun detection, the process group, reductions, synchronised BatchNorm.

``torchrun --nproc-per-node N -m dlmi train …`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in their environment. Each copy joins
the process group (NCCL on GPUs, gloo on the CPU, picked from the device), trains its share of every
batch under :class:`~torch.nn.parallel.DistributedDataParallel`, and the epoch's losses and per-image
records are combined across processes so that every process computes the same metrics. Only rank 0
writes files (see ``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlmi.errors import DlmiError
from dlmi.runtime.device import resolve_device as resolve_one_device

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run: its rank among ``world_size`` processes, and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise DlmiError(f"environment variable {name}={value!r}: expected a whole number") from None


def launch_context() -> DistributedContext:
    """The context torchrun's environment describes (a single process when its variables are absent)."""
    present = [name for name in LAUNCH_VARIABLES if name in os.environ]
    if not present:
        return SINGLE_PROCESS
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise DlmiError(
            f"environment has {', '.join(present)} but not {', '.join(missing)}; "
            "start distributed training with torchrun (see docs/distributed.md)"
        )
    rank, world, local_rank = (_env_int(name) for name in LAUNCH_VARIABLES)
    local_world = _env_int("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else world
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise DlmiError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                        f"LOCAL_RANK={local_rank}")
    return DistributedContext(rank, world, local_rank, local_world)


def resolve_device(name: str, context: DistributedContext = SINGLE_PROCESS) -> torch.device:
    """The device of ``--device name`` (:func:`dlmi.runtime.device.resolve_device`), and under torchrun
    the GPU of this process's ``LOCAL_RANK``: there ``cuda:N`` is an error, the rank chooses N.
    """
    device = resolve_one_device(name)
    if not context.enabled or device.type == "cpu":
        return device
    if device.type != "cuda" or device.index is not None:
        raise DlmiError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                        "use --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs")
    if context.local_rank >= torch.cuda.device_count():
        raise DlmiError(f"LOCAL_RANK {context.local_rank}: this node has only {torch.cuda.device_count()} "
                        "GPU(s); start at most that many processes per node")
    return torch.device("cuda", context.local_rank)


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[tuple[DistributedContext, torch.device]]:
    """Join the process group when started by torchrun (and leave it at the end); else a single process.

    A process group that already exists (a caller's own) is used as it is and left open.
    """
    context = launch_context()
    device = resolve_device(device_name, context)
    if not context.enabled:
        yield context, device
        return
    if not dist.is_available():
        raise DlmiError("this PyTorch build has no torch.distributed; train in one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    else:
        backend = str(dist.get_backend())
    context = DistributedContext(context.rank, context.world_size, context.local_rank,
                                 context.local_world_size, backend)
    try:
        yield context, device
        if owned:
            dist.barrier()  # rank 0 may still be writing its last files
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The element-wise sum of ``values`` over every process (``values`` itself in one process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_records(records: dict[str, torch.Tensor], context: DistributedContext) -> dict[str, torch.Tensor]:
    """Per-image records of every process, concatenated in rank order (on the CPU when gathered)."""
    if not context.enabled:
        return records
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, {k: v.detach().cpu() for k, v in records.items()})
    keys = sorted({k for part in gathered for k in part})
    return {k: torch.cat([part[k] for part in gathered if k in part]) for k in keys}


@contextlib.contextmanager
def main_process_first(context: DistributedContext) -> Iterator[None]:
    """Rank 0 runs the block first (filling caches), then the other processes run it."""
    if context.enabled and not context.is_main:
        dist.barrier()
    yield
    if context.enabled and context.is_main:
        dist.barrier()


class _SumOverProcesses(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch, on any backend.

    :class:`torch.nn.SyncBatchNorm` runs on GPUs only; this one all-reduces per-channel sums with a
    differentiable all-reduce (its backward all-reduces the gradients), so it also works with gloo on the
    CPU. Mean first, then the centred sum of squares (two
    all-reduces, the numerically careful order), in fp32. In eval mode, or outside a process group of
    several processes, it is plain BatchNorm2d; its state dict is BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        values = x.float()
        dims = (0, 2, 3)
        local_count = torch.full((1,), values.numel() // values.shape[1], dtype=values.dtype, device=x.device)
        sums = _SumOverProcesses.apply(torch.cat([values.sum(dims), local_count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = values - mean.view(1, -1, 1, 1)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), float(momentum or 0.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), float(momentum or 0.0))
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)


def _to_all_reduce_batchnorm(module: nn.Module) -> nn.Module:
    converted = module
    if type(module) is nn.BatchNorm2d:
        converted = AllReduceBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, _to_all_reduce_batchnorm(child))
    return converted


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with BatchNorm statistics over the global batch: SyncBatchNorm on GPUs, else ours."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_all_reduce_batchnorm(model)


def wrap_ddp(model: nn.Module, device: torch.device, synced_batchnorm: bool) -> nn.Module:
    """``model`` under DistributedDataParallel (gradients averaged across processes after backward).

    With synchronised BatchNorm the running statistics are equal everywhere, so buffers are not
    re-broadcast before each forward; without it rank 0's running statistics are broadcast (DDP's default).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        sync = {"forward_sync_buffers": not synced_batchnorm}  # torch ≥ 2.14 renamed broadcast_buffers
    else:
        sync = {"broadcast_buffers": not synced_batchnorm}
    return DistributedDataParallel(model, device_ids=device_ids, **sync)
