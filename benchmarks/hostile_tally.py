"""Run every case of the hostile-input battery (tests/hostile) and tally the outcomes, per kind and in total.

It reports what happens on the code it runs, whatever each case expects: a case whose outcome differs from
its expectation is listed with the reason. Needs no pytest; the tiny models are trained once into a
temporary folder (about half a minute on a CPU).

Usage (from the repository root):

    PYTHONPATH=src .venv/bin/python benchmarks/hostile_tally.py            # every case
    PYTHONPATH=src .venv/bin/python benchmarks/hostile_tally.py -k names   # ids containing "names"

Results: ``benchmarks/results/hostile-tally.md`` and ``.json`` (not written with -k).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT / "src")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hostile import KINDS, all_cases  # noqa: E402
from hostile.harness import Workspace, World, run_case  # noqa: E402
from hostile.outcome import OUTCOMES  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
SKIPPED = "skipped"
COLUMNS = ("cases", *OUTCOMES, SKIPPED)


def tally(results: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Per kind and ``total``: how many cases, and how many of each outcome."""
    table = {kind: dict.fromkeys(COLUMNS, 0) for kind in (*KINDS, "total")}
    for result in results:
        for row in (table[result["kind"]], table["total"]):
            row["cases"] += 1
            row[result["outcome"]] += 1
    return table


def markdown(table: dict[str, dict[str, int]], results: list[dict[str, str]], seconds: float) -> str:
    lines = [
        "# Hostile-input battery: tally",
        "",
        f"{table['total']['cases']} cases (tests/hostile), run by benchmarks/hostile_tally.py in "
        f"{seconds:.0f} s. Goal (issue 18): 0 silent-wrong, 0 lost, 0 traceback, 0 hang.",
        "",
        "| kind | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for kind, row in table.items():
        label = f"**{kind}**" if kind == "total" else kind
        lines.append(f"| {label} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    off = [r for r in results if r["outcome"] not in (r["expect"], SKIPPED)]
    lines += ["", f"## Cases without their expected outcome ({len(off)})", ""]
    lines += [f"- `{r['id']}`: expected {r['expect']}, got **{r['outcome']}** ({r['reason']})" for r in off]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the cases whose id contains this")
    parser.add_argument("--world", type=Path, help="keep the trained models in this folder (reused)")
    parser.add_argument("-v", action="store_true", help="print every case's outcome")
    args = parser.parse_args()
    cases = [c for c in all_cases() if args.k in c.id]
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlmi-hostile-") as tmp:
        world = World(args.world or Path(tmp) / "world")
        for case in cases:
            reason = case.skip() if case.skip else None
            case_start = time.perf_counter()
            if reason:
                outcome = SKIPPED
            else:
                try:
                    verdict, _record = run_case(case, Workspace(Path(tmp) / case.id, world))
                    outcome, reason = verdict.outcome, verdict.reason
                except Exception as exc:  # noqa: BLE001 - a case that cannot be set up is a broken case
                    outcome, reason = "traceback", f"the case's own setup failed: {type(exc).__name__}: {exc}"
            results.append(
                {
                    "id": case.id,
                    "kind": case.kind,
                    "expect": case.expect,
                    "outcome": outcome,
                    "reason": reason or "",
                    "seconds": round(time.perf_counter() - case_start, 2),
                }
            )
            if args.v or outcome not in (case.expect, SKIPPED):
                print(f"{outcome:>12}  {case.id}  (expected {case.expect}) {reason}", flush=True)
    seconds = time.perf_counter() - start
    table = tally(results)
    text = markdown(table, results, seconds)
    print(text)
    if not args.k:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "hostile-tally.md").write_text(text, encoding="utf-8")
        (RESULTS / "hostile-tally.json").write_text(
            json.dumps({"seconds": round(seconds, 1), "tally": table, "cases": results}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
