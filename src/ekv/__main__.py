"""``python -m ekv``: the command line (see ``ekv --help``)."""

import sys

from ekv._cli import main

if __name__ == "__main__":
    sys.exit(main())
