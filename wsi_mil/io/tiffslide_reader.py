"""tiffslide backend: pure-Python TIFF pyramids (SVS incl. JPEG 2000, flat TIFFs OpenSlide rejects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.io.base import to_rgb_uint8
from wsi_mil.io.openslide_reader import WrappedSlideReader


class TiffSlideReader(WrappedSlideReader):
    backend = "tiffslide"

    def _open(self, path: Path) -> Any:
        import tiffslide

        return tiffslide.TiffSlide(str(path))

    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        array = self._slide.read_region(location, level, size, as_array=True)
        return to_rgb_uint8(np.asarray(array), self.background)
