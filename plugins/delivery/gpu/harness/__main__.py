"""``python -m delivery.gpu.harness``: run the checks, write the result, exit 0, 1 or 2."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
