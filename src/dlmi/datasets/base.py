"""What a dataset plugin provides: a list of samples and a way to read one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dlmi.errors import DlmiError
from dlmi.imageio import read_grey, read_mask

# The largest image side in pixels a model is trained or exported at; more is a typo or a corrupt value.
MAX_IMAGE_SIZE = 16384


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``key`` is the sample's stable identity, ``class/file`` relative to the data folder (it is what split
    files list). ``mask_paths`` is empty for an image without a mask file; whether that means "empty mask"
    or "no mask" is the source's ``has_masks`` flag.
    """

    key: str
    label: int
    image_path: Path | None = None
    mask_paths: tuple[Path, ...] = ()


def normal_index(classes: Sequence[str], normal_class: str | None) -> int | None:
    """Index of ``normal_class`` among ``classes``; ``None`` when there is no normal class (or ``classes``
    lacks it). The one place the gate's class index is computed."""
    if normal_class is None or normal_class not in classes:
        return None
    return list(classes).index(normal_class)


def list_samples(source: DatasetSource, data_dir: Path | None) -> list[Sample]:
    """``source.samples(data_dir)``, held to the protocol: a list of :class:`Sample` whose labels index
    ``source.classes`` and whose keys are unique. A plugin's failure or a wrong list becomes one line naming
    the dataset and where it comes from (a :class:`DlmiError` of its own passes unchanged)."""
    try:
        samples = source.samples(data_dir)
    except DlmiError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"{describe_source(source)} cannot list its samples: {type(exc).__name__}: {first}") \
            from exc
    if not isinstance(samples, list | tuple):
        raise DlmiError(f"{describe_source(source)}: samples() returned {type(samples).__name__}, "
                        f"not a list of Sample")
    classes = tuple(getattr(source, "classes", ()))
    seen: set[str] = set()
    for sample in samples:
        if not isinstance(sample, Sample):
            raise DlmiError(f"{describe_source(source)}: samples() listed a {type(sample).__name__}, "
                            f"not a Sample")
        label = sample.label
        whole = isinstance(label, int | np.integer) and not isinstance(label, bool)
        if not whole or not 0 <= label < len(classes):
            raise DlmiError(f"{describe_source(source)}: sample {sample.key} has label {label!r}; a label is "
                            f"the index of its class in {classes} (0 to {len(classes) - 1})")
        if sample.key in seen:
            raise DlmiError(f"{describe_source(source)}: sample {sample.key} is listed twice; keys must be "
                            f"unique")
        seen.add(sample.key)
    return list(samples)


def load_sample(source: DatasetSource, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """``source.load(sample)``, held to the protocol: a uint8 (H, W) image and a bool mask of its size (or
    ``None``). A plugin's failure or a result of another kind becomes one line naming the dataset and where
    it comes from, the sample's file and the cause (a :class:`DlmiError` of its own passes unchanged)."""
    where = sample.image_path if sample.image_path is not None else sample.key
    try:
        result = source.load(sample)
    except DlmiError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"{describe_source(source)} cannot load {where}: {type(exc).__name__}: {first}") \
            from exc
    problem = _protocol_problem(result)
    if problem:
        raise DlmiError(f"{describe_source(source)} cannot load {where}: load() returned {problem}")
    image, mask = result
    return image, mask


def describe_source(source: DatasetSource) -> str:
    """``dataset 'NAME' (from PLUGIN)``: a dataset source as an error line names it."""
    from dlmi.plugins import get_plugins

    name = str(getattr(source, "name", type(source).__name__))
    registry = get_plugins().datasets
    origin = f" (from {registry.get(name).source})" if name in registry else ""
    return f"dataset {name!r}{origin}"


def _protocol_problem(result: object) -> str | None:
    """What is wrong with a ``load`` result, in words; ``None`` when it is a uint8 (H, W) image and a bool
    mask of the same size (or ``None``)."""
    if not isinstance(result, tuple | list) or len(result) != 2:
        return f"{type(result).__name__}, not an (image, mask) pair"
    image, mask = result
    for role, array, dtype in (("an image", image, np.uint8), ("a mask", mask, np.bool_)):
        if role == "a mask" and array is None:
            continue
        if not isinstance(array, np.ndarray):
            return f"{role} of type {type(array).__name__}; expected a numpy array"
        if array.ndim != 2 or array.size == 0:
            return f"{role} of shape {array.shape}; expected (H, W)"
        if array.dtype != dtype:
            expected = "uint8 (grey 0-255)" if role == "an image" else "bool"
            return f"{role} of dtype {array.dtype}; expected {expected}"
    if mask is not None and mask.shape != image.shape:
        return (f"a mask of another size: the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                f"{image.shape[1]}x{image.shape[0]}")
    return None


@runtime_checkable
class DatasetSource(Protocol):
    """The protocol every dataset plugin follows.

    Attributes:
        name: the registered name.
        classes: class names, index = label.
        normal_class: the class that means "no finding" (``None`` if there is none).
        has_masks: whether samples carry segmentation masks.
        needs_data_dir: whether ``samples`` reads a folder (False for generated data).
    """

    name: str
    classes: tuple[str, ...]
    normal_class: str | None
    has_masks: bool
    needs_data_dir: bool

    def samples(self, data_dir: Path | None) -> list[Sample]:
        """All samples, in a stable order; a one-line :class:`DlmiError` for a folder of the wrong layout."""
        ...

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """The image as uint8 (H, W) greyscale and the mask as bool (H, W) (``None`` without masks)."""
        ...


class FileDataset:
    """Base for sources that read images (and masks) from files; subclasses implement ``samples``."""

    name: str = ""
    classes: tuple[str, ...] = ()
    normal_class: str | None = None
    has_masks: bool = False
    needs_data_dir: bool = True
    expected_layout: str = ""

    def samples(self, data_dir: Path | None) -> list[Sample]:
        raise NotImplementedError

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        if sample.image_path is None:
            raise DlmiError(f"{sample.key}: sample has no image file")
        image = read_grey(sample.image_path)
        if not self.has_masks:
            return image, None
        height, width = image.shape
        if not sample.mask_paths:
            return image, np.zeros((height, width), dtype=bool)
        return image, read_mask(sample.mask_paths, size=(width, height))

    def check_data_dir(self, data_dir: Path | None) -> Path:
        """The data folder, or a one-line error saying what layout was expected."""
        if data_dir is None:
            raise DlmiError(f"dataset {self.name!r} needs --data-dir ({self.expected_layout})")
        data_dir = Path(data_dir)
        if not data_dir.exists():
            expects = f"dataset {self.name!r} expects {self.expected_layout}"
            raise DlmiError(f"{data_dir}: no such folder; {expects}")
        if not data_dir.is_dir():
            raise DlmiError(f"{data_dir}: not a folder; dataset {self.name!r} expects {self.expected_layout}")
        return data_dir

    @property
    def normal_index(self) -> int | None:
        return normal_index(self.classes, self.normal_class)
