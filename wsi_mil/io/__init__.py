"""Slide readers behind one OpenSlide-shaped protocol, and MPP resolution."""

from __future__ import annotations

from wsi_mil.io.base import BaseReader, SlideReader
from wsi_mil.io.mpp import MPP_RANGE, MppInfo, resolve_mpp
from wsi_mil.io.open import READER_NAMES, list_readers, open_slide

__all__ = [
    "MPP_RANGE",
    "READER_NAMES",
    "BaseReader",
    "MppInfo",
    "SlideReader",
    "list_readers",
    "open_slide",
    "resolve_mpp",
]
