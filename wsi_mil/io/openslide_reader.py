"""OpenSlide backend: Aperio, Hamamatsu, MIRAX, DICOM, Leica, Ventana, generic tiled TIFF."""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import SlideReadError
from wsi_mil.io.base import BaseReader, to_rgb_uint8
from wsi_mil.io.tiff_tiles import TiffTiles

logger = logging.getLogger(__name__)

#: OpenSlide formats whose levels are plain TIFF pages that tifffile may decode directly
#: (:mod:`wsi_mil.io.tiff_tiles`); others (Ventana's overlapping tiles, Philips' sparse
#: levels, NDPI's strips) are always read through OpenSlide.
TILE_VENDORS = frozenset({"aperio", "generic-tiff"})
#: Side of the probe region that must agree with OpenSlide before tiles are decoded directly.
PROBE_SIDE = 64


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

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override=mpp_override)
        self._tiles: TiffTiles | None = None
        self._tiles_checked = False

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

    def read_level_region(self, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """An exact crop of ``level``, decoded by tifffile where the pyramid allows it
        (:mod:`wsi_mil.io.tiff_tiles`), else through OpenSlide."""
        tiles = self._direct_tiles()
        if tiles is None or not tiles.has_level(level):
            return super().read_level_region(level, location, size)
        self.check_deadline()
        try:
            return tiles.read(level, int(location[0]), int(location[1]), int(size[0]), int(size[1]))
        except Exception as error:  # tifffile and imagecodecs raise their own types
            raise self.decode_error(f"level {level} ({location[0]}, {location[1]}) in level pixels", error) from error

    def _direct_tiles(self) -> TiffTiles | None:
        if not self._tiles_checked:
            self._tiles_checked = True
            if self.properties.get("openslide.vendor") in TILE_VENDORS:
                self._tiles = self._checked_tiles()
        return self._tiles

    def _checked_tiles(self) -> TiffTiles | None:
        """The direct tile reader, when a probe at the coarsest stored level's origin equals OpenSlide's read."""
        tiles = TiffTiles.open(self.path, self.level_dimensions, self.background)
        if tiles is None:
            return None
        level = max(level for level in range(self.level_count) if tiles.has_level(level))  # the coarsest
        width, height = self.level_dimensions[level]
        size = (min(width, PROBE_SIDE), min(height, PROBE_SIDE))
        try:
            reference = self.read_region((0, 0), level, size, as_array=True)
        except SlideReadError:
            reference = None
        if reference is None or not tiles.agrees(reference, level):
            logger.debug("%s: tiles decoded directly differ from OpenSlide's; reading through OpenSlide", self.path)
            tiles.close()
            return None
        return tiles

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
            self._tiles = None
        super().close()
