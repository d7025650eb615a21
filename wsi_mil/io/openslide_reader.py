"""OpenSlide backend: Aperio, Hamamatsu, MIRAX, DICOM, Leica, Ventana, generic tiled TIFF."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.io.base import BaseReader, to_rgb_uint8


class WrappedSlideReader(BaseReader):
    """A backend around a library object that already has OpenSlide's API."""

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override=mpp_override)
        self._slide = self._open(self.path)
        # asked for on every region read (~50 times a slide in tiling): read once
        self._level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)

    @abc.abstractmethod
    def _open(self, path: Path) -> Any: ...

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    @property
    def properties(self) -> Mapping[str, Any]:
        return self._slide.properties

    def close(self) -> None:
        self._slide.close()


class OpenSlideReader(WrappedSlideReader):
    backend = "openslide"

    def _open(self, path: Path) -> Any:
        import openslide  # binary wheel from openslide-bin; no system library needed

        return openslide.OpenSlide(str(path))

    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import openslide

        try:
            region = self._slide.read_region(location, level, size)
        except openslide.OpenSlideError:
            # An OpenSlide handle stays in error state after one failed read: reopen it, so
            # one undecodable tile does not make every later read of the slide fail too.
            self._slide.close()
            self._slide = self._open(self.path)
            raise
        # RGBA with transparent areas outside the scanned region: composite on the background.
        return to_rgb_uint8(np.asarray(region), self.background)
