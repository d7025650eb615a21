"""Where real data lives: the files shipped with wsi-mil, and the fuller shared data folder.

Shipped (redistributable, with licence and attribution beside each file):

- :func:`embedded_data_dir`: package data ``wsi_mil/data`` (CMU-1-Small-Region.svs, CC0;
  Kather 2016 colorectal tiles, CC BY 4.0): the demo's tissue, present in every install;
- :func:`repository_test_data_dir`: ``tests/data`` of a source checkout (small.svs, the
  NDPI, histolab's tiles).

Both use the layout of the shared folder (``slides/``, ``tiles/``, ``kather2016-samples/``),
so a file has the same relative path wherever it comes from.

:func:`shared_data_dir`: the full shared folder (TCGA, GlaS, BreakHis, bad files and more,
which may not be redistributed). ``WSI_MIL_DATA`` wins; when it is set, nothing else is
looked at (set it to an empty folder to see what a fresh clone sees); otherwise
``../shared/data`` beside the repository root (found from this file, never from the
working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "WSI_MIL_DATA"
_PACKAGE = Path(__file__).resolve().parent


def shared_data_dir() -> Path | None:
    """The full shared data folder, or None when it is not on this machine."""
    override = os.environ.get(ENV_VAR)
    candidate = Path(override) if override else _PACKAGE.parent.parent / "shared" / "data"
    return candidate if (candidate / "slides").is_dir() else None


def embedded_data_dir() -> Path:
    """``wsi_mil/data``: the real H&E that ships inside the package."""
    return _PACKAGE / "data"


def repository_test_data_dir() -> Path | None:
    """``tests/data`` of a source checkout, or None in an installed package."""
    path = _PACKAGE.parent / "tests" / "data"
    return path if path.is_dir() else None


def shipped_data_dirs() -> list[Path]:
    """Folders of redistributable data that come with this copy of wsi-mil, package data first."""
    return [p for p in (embedded_data_dir(), repository_test_data_dir()) if p is not None and p.is_dir()]
