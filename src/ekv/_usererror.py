"""The command line's error for a problem the user can fix (a missing store, a bad argument).

Its own module so that the command's helpers (``_backup``, ...) can raise it without importing
``_cli``, which imports them: the command line prints it as one line, ``ekv: error: ...``. It is
not an :class:`ekv.Error`: the library never raises it, only the tools around the command line.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""
