"""``python -m wsi_mil``: the ``wsi-mil`` command, for environments without the console script."""

from __future__ import annotations

import sys

from wsi_mil.cli import main

if __name__ == "__main__":
    sys.exit(main())
