"""Config sections of the tile stage: tissue detection and the patch grid."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from wsi_mil.config.fields import neutral_field

#: File name suffixes scanned in folders (lower case). Multi-file formats are
#: handled by discovery (DICOM folders, MIRAX companion folders, VMS image lists).
DEFAULT_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
)


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection (see wsi_mil.tiling.tissue); defaults suit H&E and IHC brightfield slides."""

    #: ``auto`` (fluorescence on a dark background, else hsv_otsu), ``hsv_otsu``
    #: (saturation), ``gray_otsu`` (darkness) or ``fluorescence`` (brightness).
    method: str = "auto"
    #: Detection resolution in um/px; a pyramid level between this and
    #: ``thumbnail_mpp_max`` is used as stored, otherwise a finer one is reduced to it.
    thumbnail_mpp: float = 8.0
    thumbnail_mpp_max: float = 16.0
    #: Coarse-to-fine detection: a stored level at most this coarse (um/px, and at least twice
    #: as coarse as the detection resolution) is detected whole, and the detection resolution
    #: is read only where the coarse mask could be wrong (its edges, faint colour). 0: detect
    #: the whole slide at the detection resolution.
    coarse_mpp: float = 32.0
    #: Median filter window, in thumbnail pixels (odd).
    median_size: int = 5
    #: Clip range of the Otsu threshold on saturation (0-1).
    saturation_range: tuple[float, float] = (0.07, 0.15)
    #: Clip range of the Otsu threshold on darkness 1 - grey (0-1).
    darkness_range: tuple[float, float] = (0.08, 0.25)
    #: Clip range of the Otsu threshold on brightness (fluorescence).
    brightness_range: tuple[float, float] = (0.04, 0.12)
    #: hsv_otsu: pixels of at least this saturation that join tissue above the threshold are
    #: tissue too (pale stroma, the membranes of fat); glass stays below ~0.03. 0: only the
    #: threshold counts (drops pale and fat-rich tissue).
    faint_saturation: float = 0.04
    #: Pixels darker than this value (HSV V, 0-1) are not tissue.
    black_value: float = 0.12
    #: Radius of the closing disk, in um.
    closing_radius_um: float = 24.0
    #: Tissue fragments smaller than this area are dropped, in um^2.
    min_object_um2: float = 20_000.0
    #: Holes smaller than this area are filled, in um^2.
    max_hole_um2: float = 40_000.0
    #: Remove blue, green, black and red marker ink.
    remove_pen: bool = True
    #: Ink blobs smaller than this are not marker strokes, in um^2.
    min_pen_um2: float = 10_000.0
    #: Faint ink-coloured pixels this close to a stroke are its blurred edge, in um.
    pen_halo_um: float = 200.0
    #: Ink mask dilation radius, in um.
    pen_margin_um: float = 16.0

    CHOICES: typing.ClassVar[dict[str, tuple[str, ...]]] = {"method": ("auto", "hsv_otsu", "gray_otsu", "fluorescence")}


@dataclass(frozen=True)
class TilingConfig:
    """Patch grid and bag output."""

    #: Target resolutions in um/px; one bag set each.
    target_mpp: tuple[float, ...] = (0.5,)
    #: Target magnifications (20 -> 0.5 um/px by the 10/x convention); replace target_mpp.
    magnification: tuple[float, ...] = ()
    #: Tile in pixels at this pyramid level instead (no MPP needed); replaces both.
    level: int | None = None
    patch_size: int = 256
    #: Fraction of a patch shared with its neighbour, 0 <= overlap < 1.
    overlap: float = 0.0
    #: Keep a patch when at least this fraction of it is tissue.
    tissue_threshold: float = 0.5
    bag_format: str = "h5"
    #: Store patch pixels (N, H, W, 3) uint8 in the bag.
    save_pixels: bool = False
    reader: str = "auto"
    #: Level-0 MPP for every slide of the run (a CSV 'mpp' column wins per slide).
    mpp: float | None = None
    #: Write a QC image per slide and bag set.
    qc: bool = neutral_field(True)
    #: Seconds one slide may take (all its bag sets); over it the slide is ``failed`` and the batch
    #: goes on. Checked between reads, so a read in progress finishes first. null: no limit.
    slide_timeout: float | None = neutral_field(None)
    #: A slide whose undecodable tiles cover more than this fraction of the tissue-detection
    #: thumbnail fails; fewer are filled as background and listed in the manifest note.
    max_unreadable_fraction: float = neutral_field(0.05)
    extensions: tuple[str, ...] = neutral_field(DEFAULT_EXTENSIONS)

    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "bag_format": ("h5", "zarr"),
        "reader": ("auto", "openslide", "tiffslide", "image"),
    }

    def check(self) -> None:
        if self.patch_size < 8:
            raise ValueError("patch_size must be at least 8")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError("overlap must be in [0, 1)")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ValueError("tissue_threshold must be in [0, 1]")
        if self.level is None and not (self.target_mpp or self.magnification):
            raise ValueError("set target_mpp, magnification or level")
        if any(value <= 0 for value in (*self.target_mpp, *self.magnification)):
            raise ValueError("target_mpp and magnification must be positive")
        if self.level is not None and self.level < 0:
            raise ValueError("level must be >= 0")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError("mpp must be positive")
        if self.slide_timeout is not None and self.slide_timeout <= 0:
            raise ValueError("slide_timeout must be a positive number of seconds (or null: no limit)")
        if not 0.0 <= self.max_unreadable_fraction <= 1.0:
            raise ValueError("max_unreadable_fraction must be in [0, 1]")
