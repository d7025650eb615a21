"""Config section of the heatmap stage, and the CAM methods it may run."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from wsi_mil.config.fields import check_device, neutral_field

#: Every within-patch method wsi_mil.explain.cam runs: pytorch-grad-cam's CAMs, then captum's
#: integrated gradients.
CAM_METHODS = (
    "gradcam",
    "hirescam",
    "gradcam++",
    "scorecam",
    "ablationcam",
    "eigencam",
    "layercam",
    "fullgrad",
    "integrated_gradients",
)
#: Cheap enough for the top patches of every slide on a CPU; Score-CAM, Ablation-CAM and
#: FullGrad cost one forward pass per feature channel (or per layer), integrated gradients
#: ``cam_ig_steps`` forward and backward passes per patch: those are asked for by name.
DEFAULT_CAM_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "eigencam")


@dataclass(frozen=True)
class HeatmapConfig:
    """Slide heatmaps from per-patch scores (wsi_mil.explain)."""

    #: Maps to draw: attention_pct, attention_raw, attention, relevance, logit, contribution
    #: (the last two for the positive or predicted class). Empty: all of these the scores have.
    maps: tuple[str, ...] = ()
    #: Outputs per map: zarr (OME-Zarr), tiff (float32 pyramid), rgba_tiff (colour-mapped,
    #: opens in OpenSlide), png (thumbnail overlay), geojson (all maps, one file), gallery (the
    #: map's top and bottom patches, PNG), blend_tiff (level-0 colour map blended with the slide, JPEG; large).
    formats: tuple[str, ...] = neutral_field(("zarr", "tiff", "rgba_tiff", "png", "geojson", "gallery"))
    #: Finest OME-Zarr scale: a slide pyramid level, or an um/px (mpp); both null: level 0.
    #: TIFFs always start at the slide's level-0 size, so they overlay it exactly.
    level: int | None = None
    mpp: float | None = None
    #: Gaussian smoothing sigma in pixels of that finest scale (0: none); scaled for other levels.
    smooth_sigma: float = 0.0
    #: A matplotlib colormap for the colour-mapped outputs of unsigned maps (attention...).
    cmap: str = "jet"
    #: The colormap of signed maps (logit_*, contribution_*), centred at 0 (wsi_mil.explain.scaling).
    diverging_cmap: str = "RdBu_r"
    #: Colour range: slide (its own percentiles), cohort (percentiles over all the run's slides,
    #: so colours compare across slides) or fixed (``range``).
    scale: str = "cohort"
    #: The percentiles of ``scale`` slide/cohort (global, never per patch); signed maps: the upper one of |value|.
    percentiles: tuple[float, float] = (1.0, 99.0)
    #: [low, high] for ``scale: fixed``; signed maps use +-max(|low|, |high|).
    range: tuple[float, float] | None = None
    #: Near-neutral values left undrawn, as a fraction of the range: around 0 for signed maps,
    #: the bottom of the range for the others (0: draw everything).
    neutral: float = 0.1
    #: geojson: regions.geojson merges the patches whose colour position (0 = low end,
    #: 1 = high end of the colour range) is at least this into QuPath annotations.
    regions_above: float = 0.75
    #: Opacity of the colour map over the slide (png, blend_tiff).
    alpha: float = 0.5
    #: Longest side of the PNG overlay, in pixels.
    thumbnail_size: int = 2048
    #: Chunk side of the Dask canvases and OME-Zarr arrays.
    chunk_size: int = 1024
    #: Threads per slide for painting and compression; null: all cores.
    threads: int | None = neutral_field(None)
    #: Patches per row of the ``gallery`` format: the map's highest and lowest scoring.
    gallery_k: int = 8
    #: Within-patch maps of this many most attended patches (0: none).
    cam_top_k: int = 8
    #: CAM methods (any of CAM_METHODS); the default ones are cheap on a CPU.
    cam_methods: tuple[str, ...] = DEFAULT_CAM_METHODS
    #: Integrated-gradients steps.
    cam_ig_steps: int = 32
    #: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
    cam_device: str = neutral_field("auto")
    #: Slide context around each explained patch, as a fraction of its side (CNN encoders):
    #: the CAM sees the surroundings instead of zero padding, which draws a ring into maps
    #: of the patch alone. 0: the patch alone.
    cam_context: float = 0.25
    #: Seconds one slide may take; over it the slide is failed and the batch goes on. Each slide then
    #: runs in a child process, stopped at the limit even inside a C call (null: no limit, no child).
    slide_timeout: float | None = neutral_field(None)

    FORMATS: typing.ClassVar[tuple[str, ...]] = ("zarr", "tiff", "rgba_tiff", "png", "geojson", "gallery", "blend_tiff")
    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {"scale": ("slide", "cohort", "fixed")}

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in self.FORMATS]
        if unknown:
            raise ValueError(f"unknown format(s) {unknown}; allowed: {', '.join(self.FORMATS)}")
        if self.level is not None and self.mpp is not None:
            raise ValueError("set level or mpp, not both")
        if (self.level is not None and self.level < 0) or (self.mpp is not None and self.mpp <= 0):
            raise ValueError("level must be >= 0 and mpp positive")
        if (self.threads is not None and self.threads < 1) or self.gallery_k < 1:
            raise ValueError("threads (or null) and gallery_k must be at least 1")
        if self.smooth_sigma < 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError("smooth_sigma must be >= 0 and alpha in [0, 1]")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ValueError("percentiles must be two increasing values in [0, 100]")
        if self.scale == "fixed" and (self.range is None or not self.range[0] < self.range[1]):
            raise ValueError(f"scale: fixed needs range: [low, high] with low < high (got {self.range})")
        if self.scale != "fixed" and self.range is not None:
            raise ValueError(
                f"range is used only with scale: fixed (scale is {self.scale}); drop it or set scale: fixed"
            )
        if not 0.0 <= self.regions_above <= 1.0:
            raise ValueError(
                f"regions_above must be in [0, 1] (a position in the colour range), got {self.regions_above}"
            )
        if not 0.0 <= self.neutral < 0.5:
            raise ValueError(f"neutral must be in [0, 0.5) (a fraction of the colour range), got {self.neutral}")
        import matplotlib

        unknown = [c for c in (self.cmap, self.diverging_cmap) if c not in matplotlib.colormaps]
        if unknown:
            raise ValueError(f"unknown colormap(s) {unknown}: cmap and diverging_cmap must be matplotlib colormaps")
        if self.chunk_size < 256 or self.chunk_size % 256 or self.thumbnail_size < 64:
            raise ValueError("chunk_size must be a multiple of 256 and thumbnail_size at least 64")
        unknown = [m for m in self.cam_methods if m not in CAM_METHODS]
        if unknown:
            raise ValueError(f"unknown cam_methods {unknown}; allowed: {', '.join(CAM_METHODS)}")
        if self.cam_top_k < 0 or self.cam_ig_steps < 1:
            raise ValueError("cam_top_k must be >= 0 and cam_ig_steps >= 1")
        check_device("cam_device", self.cam_device)
        if not 0.0 <= self.cam_context <= 1.0:
            raise ValueError("cam_context must be in [0, 1] (a fraction of the patch side)")
        if self.slide_timeout is not None and self.slide_timeout <= 0:
            raise ValueError("slide_timeout must be a positive number of seconds (or null: no limit)")
