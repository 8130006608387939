"""dlmi: deep learning in medical imaging — classification, segmentation, classifier-aided segmentation."""

from importlib.metadata import PackageNotFoundError, version

from dlmi.errors import DlmiError
from dlmi.hookspecs import hookimpl

try:
    __version__ = version("dlmi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["DlmiError", "__version__", "hookimpl"]
