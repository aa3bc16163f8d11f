"""``python -m specwidgets.batch``: the same as ``specwidgets batch``."""

import sys

# Run by name so the task functions Dask pickles live in
# ``specwidgets.batch.runner``, not in ``__main__``.
from specwidgets.batch.cli import main

sys.exit(main())
