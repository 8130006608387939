"""The hostile-input battery (issue 18): cases by kind, a classifier of outcomes, and the runner.

``tests/test_hostile.py`` asserts each case's expected outcome; ``benchmarks/hostile_tally.py`` runs the same
cases and prints the tally. Adding a case: append a :class:`~hostile.harness.Case` to the ``CASES`` of its
kind's module (files, names, runs, options, plugins, api).
"""

from __future__ import annotations

from hostile.harness import KINDS, Case


def all_cases() -> list[Case]:
    """Every case, in kind order; ids are unique."""
    from hostile import api, files, names, options, plugins, runs

    cases = [case for module in (files, names, runs, options, plugins, api) for case in module.CASES]
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return cases


__all__ = ["KINDS", "Case", "all_cases"]
