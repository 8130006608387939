"""The hostile-input battery (issue 18, section 4): every case in tests/hostile has its expected outcome.

A case is *handled* (the right result, checked) or *refused* (non-zero exit, one line naming the file or
option and the cause, no traceback, nothing that existed before lost); anything else — silent-wrong, lost,
traceback, hang, unclear — fails it. ``benchmarks/hostile_tally.py`` runs the same cases and prints the tally.

``KNOWN`` lists the cases that fail on today's code, each with the defect it shows; they are strict xfails,
so a fix that makes one pass fails the suite until its mark is removed here.
"""

from __future__ import annotations

import pytest
from hostile import all_cases
from hostile.harness import Workspace, World, run_case

NEW = "found by the battery (not in issue 18): {}"

KNOWN: dict[str, str] = {}

CASES = all_cases()


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[case.id])] if case.id in KNOWN else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The tiny data set and models the cases share (each built on first use, once per session)."""
    return World(tmp_path_factory.mktemp("hostile-world"))


def test_known_failures_name_real_cases():
    assert set(KNOWN) <= {case.id for case in CASES}, set(KNOWN) - {case.id for case in CASES}


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_hostile_case(case, world, tmp_path):
    reason = case.skip() if case.skip else None
    if reason:
        pytest.skip(reason)
    verdict, record = run_case(case, Workspace(tmp_path / "ws", world))
    assert verdict.outcome == case.expect, (
        f"{case.id}: expected {case.expect}, got {verdict.outcome}: {verdict.reason}\n"
        f"exit {record.code}\nstdout: {record.stdout[-800:]}\nstderr: {record.stderr[-1500:]}"
    )
