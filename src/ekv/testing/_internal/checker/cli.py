"""The command line: ``python -m ekv.testing._internal.checker HISTORY.jsonl``."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from ekv.testing._internal.checker.history import load_jsonl
from ekv.testing._internal.checker.run import check
from ekv.testing._internal.checker.verdict import CHECKS


def main(argv: list[str] | None = None) -> int:
    """``python -m ekv.testing._internal.checker HISTORY.jsonl``: print the verdict; exit 1 on violations,
    2 on a malformed history."""
    parser = argparse.ArgumentParser(
        prog="python -m ekv.testing._internal.checker", description="Check an ekv operation history (JSON lines)."
    )
    parser.add_argument("history", type=Path)
    parser.add_argument("--json", action="store_true", help="print the JSON verdict instead of the summary")
    parser.add_argument("--timelines", type=int, default=3, help="timelines printed per check (default 3)")
    parser.add_argument("--checks", help=f"comma-separated subset of: {','.join(CHECKS)}")
    parser.add_argument("--max-convergence-s", type=float, help="fail if convergence took longer")
    args = parser.parse_args(argv)
    try:
        history = load_jsonl(args.history)
        checks = None if args.checks is None else [c.strip() for c in args.checks.split(",") if c.strip()]
        verdict = check(history, checks=checks, max_convergence_s=args.max_convergence_s)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        # a record of the wrong shape that the parser did not name: still "malformed", never
        # exit 1, which means "violations found"
        print(f"error: malformed history: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(verdict.to_json())
    else:
        print(verdict.summary())
        shown: dict[str, int] = defaultdict(int)
        for violation in verdict.violations:
            shown[violation.check] += 1
            if shown[violation.check] <= args.timelines:
                print()
                print(verdict.timeline(violation))
    return 0 if verdict.valid else 1
