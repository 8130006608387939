"""A run's data: the dataset source, its split, and the train/validation loaders."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dlmi.datasets.base import DatasetSource, Sample, list_samples
from dlmi.errors import DlmiError
from dlmi.training.compute.distributed import SINGLE_PROCESS, DistributedContext
from dlmi.training.config import TrainConfig
from dlmi.training.data.sampling import EpochSampler

SIDES = ("train", "val", "test")


@dataclass
class SplitData:
    """The source, the split object, and the samples of each side."""

    source: DatasetSource
    split: Any
    samples: dict[str, list[Sample]]

    @property
    def classes(self) -> list[str]:
        return list(self.source.classes)

    @property
    def normal_class(self) -> str | None:
        return self.source.normal_class

    def keys(self, side: str) -> list[str]:
        return sorted(s.key for s in self.samples[side])


def load_dataset_samples(config: TrainConfig) -> tuple[DatasetSource, list[Sample]]:
    """The registered dataset source and all its samples."""
    from dlmi.plugins import get_dataset

    source = get_dataset(config.dataset)
    data_dir = Path(config.data_dir) if config.data_dir else None
    return source, list_samples(source, data_dir)


def read_split(path: str | Path) -> Any:
    from dlmi.splits import load_split

    return load_split(Path(path))


def make_default_split(config: TrainConfig) -> Any:
    """A split with dlmi.splits' defaults (the same for every run of a dataset, whatever ``--seed`` is)."""
    from dlmi.splits import make_split

    return make_split(config.dataset, Path(config.data_dir) if config.data_dir else None)


def split_sides(split: Any, samples: Sequence[Sample], fold: int | None = None) -> dict[str, list[Sample]]:
    """The samples of each side (of fold ``fold`` of a k-fold split)."""
    from dlmi.splits import split_samples

    return {side: list(split_samples(split, list(samples), side, fold=fold)) for side in SIDES}


def prepare_data(config: TrainConfig, split: Any, *, split_name: str = "split") -> SplitData:
    """Load the source and cut its samples by ``split``; a run needs training and validation samples."""
    split_dataset = getattr(split, "dataset", config.dataset)
    if split_dataset != config.dataset:
        raise DlmiError(f"{split_name}: a split of dataset {split_dataset!r}, not of {config.dataset!r}")
    source, samples = load_dataset_samples(config)
    sides = split_sides(split, samples, config.fold)
    for side in ("train", "val"):
        if not sides[side]:
            raise DlmiError(f"{split_name}: the split has no {side} samples for dataset {config.dataset!r}")
    if config.task in ("segmentation", "joint") and not source.has_masks:
        raise DlmiError(f"dataset {config.dataset!r} has no masks; train a classifier on it instead")
    return SplitData(source=source, split=split, samples=sides)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a data worker from the seed torch gave it (deterministic per epoch)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def class_balance_weights(samples: Sequence[Sample]) -> list[float]:
    """Per-sample draw weights ``1 / n_class``: each class is drawn equally often on average."""
    counts = Counter(s.label for s in samples)
    return [1.0 / counts[s.label] for s in samples]


def make_train_sampler(class_balance: str, samples: Sequence[Sample], *, seed: int,
                       context: DistributedContext = SINGLE_PROCESS) -> EpochSampler:
    """This process's training order: a shuffle, or class-balanced draws with replacement (``sampler``).

    Drawn from ``seed + epoch`` the same way in every process, each taking every N-th sample, so one
    process and N processes see the same global batches (:mod:`dlmi.training.data.sampling`).
    """
    weights = class_balance_weights(samples) if class_balance == "sampler" else None
    return EpochSampler(len(samples), rank=context.rank, world_size=context.world_size, seed=seed,
                        shuffle=True, weights=weights)


def class_weights(samples: Sequence[Sample], num_classes: int) -> list[float]:
    """Cross-entropy weights ``N / (K · n_k)`` (1 for every class when balanced; 0 for an absent class)."""
    counts = Counter(s.label for s in samples)
    total = len(samples)
    return [total / (num_classes * counts[k]) if counts[k] else 0.0 for k in range(num_classes)]


def make_loader(dataset: Dataset, *, batch_size: int, workers: int, generator: torch.Generator | None,
                sampler: Sampler[Any], pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s order; worker seeds come from ``generator`` (reproducible, resumable).

    Workers persist across epochs (their memory caches too), and batches go to pinned memory on a GPU.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=False,
    )
