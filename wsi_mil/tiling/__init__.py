"""Tiling: tissue detection, the MPP-aware patch grid, and bag writing."""

from __future__ import annotations

from wsi_mil.tiling.grid import GridSpec, plan_grid, select_patches, tissue_fractions
from wsi_mil.tiling.tile import bag_sets, tile_slide, tile_slides
from wsi_mil.tiling.tissue import TissueConfig, detect_tissue

__all__ = [
    "GridSpec",
    "TissueConfig",
    "bag_sets",
    "detect_tissue",
    "plan_grid",
    "select_patches",
    "tile_slide",
    "tile_slides",
    "tissue_fractions",
]
