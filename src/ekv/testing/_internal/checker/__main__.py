"""``python -m ekv.testing._internal.checker HISTORY.jsonl``: see :func:`ekv.testing._internal.checker.main`."""

import sys

from ekv.testing._internal.checker.cli import main

if __name__ == "__main__":
    sys.exit(main())
