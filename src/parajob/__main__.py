"""``python -m parajob`` runs the parajob command line."""

from __future__ import annotations

import sys

from parajob.cli import main

if __name__ == "__main__":
    sys.exit(main())
