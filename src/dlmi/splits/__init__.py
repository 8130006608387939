"""Leakage-free data: the duplicate audit, grouped stratified splits (and k-fold), split checking.

See docs/data.md for what the audit finds, the threshold and the cross-label policy.
"""

from dlmi.splits.audit import AuditResult, DuplicatePair, audit_dataset, audit_samples
from dlmi.splits.check import Leak, SplitCheck, check_split
from dlmi.splits.hashing import DEFAULT_THRESHOLD, HASH_VERSION
from dlmi.splits.split import Split, load_split, make_split, save_split, split_samples

__all__ = [
    "DEFAULT_THRESHOLD",
    "HASH_VERSION",
    "AuditResult",
    "DuplicatePair",
    "Leak",
    "Split",
    "SplitCheck",
    "audit_dataset",
    "audit_samples",
    "check_split",
    "load_split",
    "make_split",
    "save_split",
    "split_samples",
]
