"""Per-process wall-clock skew for node processes, without LD_PRELOAD or root.

A ``sitecustomize.py`` written into a directory that is put first on the child's ``PYTHONPATH``
replaces ``time.time_ns`` and ``time.time`` in that process with the real clock plus an offset
read from the file named by ``EKV_SKEW_FILE`` (re-read at most every 50 ms, so the harness can
step a running node's clock). ``time.monotonic*`` and sleeps are untouched, exactly like a
machine whose wall clock is set wrong or stepped by NTP. ekv reads the wall clock only through
``time.time_ns`` (:class:`ekv._core.clock.SystemClock`), so its hybrid clock sees the skew.
The same hook applies the test-only faults named in ``EKV_FAULTS``
(:mod:`ekv.testing._internal.faults`: only one ``sitecustomize`` is imported per process).
"""

from __future__ import annotations

import os
from pathlib import Path

from ekv.testing._internal.faults import APPLY_HOOK

__all__ = ["ENV", "install", "set_offset"]

ENV = "EKV_SKEW_FILE"

_SITECUSTOMIZE = (
    """\
# Written by ekv.testing._internal.chaos.skew: test-only wall-clock skew (see that module).
import os as _os
import time as _time

_file = _os.environ.get("EKV_SKEW_FILE")
if _file:
    _real_ns = _time.time_ns
    _mono = _time.monotonic_ns
    _cache = [0, -(10**18)]

    def _offset():
        now = _mono()
        if now - _cache[1] > 50_000_000:
            try:
                with open(_file) as f:
                    _cache[0] = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
            _cache[1] = now
        return _cache[0]

    def time_ns():
        return _real_ns() + _offset()

    def time():
        return (_real_ns() + _offset()) / 1e9

    _time.time_ns = time_ns
    _time.time = time

if _os.environ.get("EKV_FAULTS"):  # negative controls in chaos runs (ekv.testing._internal.faults)
"""
    + APPLY_HOOK
)


def install(directory: Path) -> Path:
    """Write the shim into ``directory`` (created) and return it: put it first on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return directory


def set_offset(path: Path, offset_ns: int) -> None:
    """Set the offset a shimmed process reads from ``path`` (atomically: write, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(int(offset_ns)))
    os.replace(tmp, path)
