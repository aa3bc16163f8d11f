"""``python -m specwidgets``: the same as the ``specwidgets`` command (where its script is not on PATH)."""

import sys

from specwidgets.cli import main

if __name__ == "__main__":  # (not again in a worker process that imports this module)
    sys.exit(main())
