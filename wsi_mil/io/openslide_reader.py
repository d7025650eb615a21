"""OpenSlide backend: Aperio, Hamamatsu, MIRAX, DICOM, Leica, Ventana, generic tiled TIFF."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.io.base import BaseReader, composite_on_background


class OpenSlideReader(BaseReader):
    backend = "openslide"

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override=mpp_override)
        import openslide  # binary wheel from openslide-bin; no system library needed

        self._slide = openslide.OpenSlide(str(self.path))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, Any]:
        return self._slide.properties

    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region(location, level, size))
        return composite_on_background(rgba, self.background)

    def close(self) -> None:
        self._slide.close()
