"""``python -m structprune_triton``: the end-to-end demo (see :mod:`structprune_triton.demo`)."""

import sys

from .demo import main

if __name__ == "__main__":
    sys.exit(main())
