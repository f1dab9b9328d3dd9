"""Standalone evaluation (avg@k, pass@k): the same as ``python -m megatron_fork.eval``; see
``megatron_fork/eval/__main__.py`` for the options."""

import sys

from megatron_fork.eval.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
