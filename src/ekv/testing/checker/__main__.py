"""``python -m ekv.testing.checker HISTORY.jsonl``: see :func:`ekv.testing.checker.main`."""

import sys

from ekv.testing.checker.cli import main

if __name__ == "__main__":
    sys.exit(main())
