"""Slide ids become file names inside the run folder: only plain, visible names are allowed.

An id is refused (never silently renamed: two renamed ids could collide, and the
user's tables would no longer match the outputs) when it

- is empty, ``.`` or ``..``, or holds ``/`` or ``\\`` (it would leave its folder),
- starts with a dot (a hidden file that later stages skip),
- holds control characters (newlines break the manifest and logs),
- is longer than ``MAX_ID_BYTES`` (file systems stop at 255 bytes per name, and
  temporary names and suffixes are added to it).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from wsi_mil.errors import UnsafeSlideIdError

#: Longest slide id in UTF-8 bytes: room for ``.tmp-...`` prefixes and ``.zarr`` suffixes in 255.
MAX_ID_BYTES = 200


def slide_id_problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot be a file name in the run folder, or None when it can."""
    if not slide_id:
        return "is empty"
    if slide_id in (".", ".."):
        return "is a relative folder reference"
    if slide_id.startswith(("/", "\\")) or (len(slide_id) > 1 and slide_id[1] == ":" and slide_id[0].isalpha()):
        return "is an absolute path"
    if "/" in slide_id or "\\" in slide_id:
        return "holds a path separator"
    if slide_id.startswith("."):
        return "starts with a dot (a hidden file, which later stages skip)"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in slide_id):
        return "holds control characters"
    if len(slide_id.encode("utf-8", "surrogateescape")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def check_slide_id(slide_id: str, *, where: str | Path) -> str:
    """``slide_id`` unchanged when it is a safe file name, else :class:`UnsafeSlideIdError` naming ``where``."""
    problem = slide_id_problem(slide_id)
    if problem is not None:
        raise UnsafeSlideIdError(
            f"{where}: slide id {slide_id!r} {problem}; slide ids become file names inside the run "
            "folder. Give a plain name (letters, digits, '-', '_', '.' not first) in a slide_id column, "
            "or rename the file."
        )
    return slide_id
