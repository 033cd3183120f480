"""A child process that opens a store and increments one consistent counter (the tests of
linearizable operations across processes drive it). argv: data_dir, JSON options, key, count.

Prints one JSON line: {"ok": successes, "unconfirmed": n, "errors": [other error names]}."""

from __future__ import annotations

import json
import sys

import ekv


def main() -> None:
    options = json.loads(sys.argv[2])
    key, count = sys.argv[3], int(sys.argv[4])
    result: dict[str, object] = {"ok": 0, "unconfirmed": 0, "errors": []}
    with ekv.EKV(options.pop("name", "p"), sys.argv[1], **options) as kv:
        print("ready", flush=True)
        sys.stdin.readline()  # go
        for _ in range(count):
            try:
                kv.update(key, lambda v: (v or 0) + 1)
                result["ok"] = int(result["ok"]) + 1  # type: ignore[call-overload]
            except ekv.UnconfirmedError:
                result["unconfirmed"] = int(result["unconfirmed"]) + 1  # type: ignore[call-overload]
            except ekv.Error as exc:
                errors = result["errors"]
                assert isinstance(errors, list)
                errors.append(type(exc).__name__)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
