"""Reproducing the seed report's experiments end to end: ``dlmi reproduce`` / :func:`reproduce`.

    from dlmi.experiments import reproduce
    reproduce("../shared/data", profile="cpu")   # writes benchmarks/results/reproduce-cpu.md and .json
"""

from __future__ import annotations

from dlmi.experiments.profiles import PROFILES, Profile, get_profile
from dlmi.experiments.reproduction import reproduce

__all__ = ["PROFILES", "Profile", "get_profile", "reproduce"]
