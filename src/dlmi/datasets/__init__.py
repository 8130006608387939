"""Datasets: the protocol a dataset plugin follows, the shared loader, and the built-in sources.

The core imports only :mod:`dlmi.datasets.base` and :mod:`dlmi.datasets.loader`; the built-in sources
(``busi``, ``brain_mri``, ``synthetic``) are plugins loaded through entry points.
"""
