"""Which process sees which sample, in which order, with which augmentation draw.

Every process (one, or N under torchrun) draws the same epoch order from ``seed + epoch`` and takes every
N-th element of it, exactly as :class:`torch.utils.data.DistributedSampler` does; per-process batches of
``batch / N`` then make up the same global batches as one process with ``batch``. Augmentation is seeded
per sample from ``(seed, epoch, index)``, so an image gets the same random transform whichever process,
data worker or resumed run loads it. Together: N processes train on the same batches, with the same
augmentation, as one process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from dlmi.datasets.loader import ImageDataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch."""
    state = np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochSampler(DistributedSampler):
    """This process's share of each epoch's order, as ``(epoch, index)`` pairs; call :meth:`set_epoch`.

    The order is a permutation (``shuffle``), the plain order, or — with ``weights`` — ``size`` draws with
    replacement in proportion to the weights (class-balanced sampling), from a generator seeded with
    ``seed + epoch``. With several processes the order is padded by repeating its start to a multiple of
    ``world_size`` (as DistributedSampler does), so every process gets the same number of samples.
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.size = size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def order(self) -> list[int]:
        """This process's sample indices for the current epoch."""
        if self.weights is None:
            return list(super().__iter__())
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        padding = self.total_size - len(drawn)
        if padding > 0:
            drawn += (drawn * math.ceil(padding / len(drawn)))[:padding]
        return drawn[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        return iter([(epoch, index) for index in self.order()])


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + N, …`` of ``0 … size-1`` in order, without padding (validation)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class EpochDataset(Dataset):
    """An :class:`ImageDataset` read by index or by ``(epoch, index)``.

    When the dataset augments, each item's transform draws from torch's RNG seeded with
    :func:`sample_seed` ``(seed, epoch, index)`` (the caller's RNG state is restored afterwards).
    """

    def __init__(self, dataset: ImageDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.dataset.transform is None:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]
