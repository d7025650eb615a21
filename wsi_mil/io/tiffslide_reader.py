"""tiffslide backend: pure-Python TIFF pyramids (SVS incl. JPEG 2000, flat TIFFs OpenSlide rejects)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.io.base import BaseReader, to_rgb_uint8


class TiffSlideReader(BaseReader):
    backend = "tiffslide"

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override=mpp_override)
        import tiffslide

        self._slide = tiffslide.TiffSlide(str(self.path))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, Any]:
        return self._slide.properties

    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        array = self._slide.read_region(location, level, size, as_array=True)
        return to_rgb_uint8(np.asarray(array), self.background)

    def close(self) -> None:
        self._slide.close()
