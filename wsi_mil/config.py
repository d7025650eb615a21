"""Typed configuration: dataclasses with defaults, loaded from YAML, overridden from the CLI.

Every error names the key, the file and what is allowed, before any work starts.
The resolved configuration is written as JSON beside the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil.errors import ConfigError

#: File name suffixes scanned in folders (lower case). Multi-file formats are
#: handled by discovery (DICOM folders, MIRAX companion folders, VMS image lists).
DEFAULT_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
    ".bif", ".dcm", ".png", ".jpg", ".jpeg", ".bmp",
)  # fmt: skip


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
    qc: bool = True
    #: Seconds one slide may take (all its bag sets); over it the slide is ``failed`` and the batch
    #: goes on. Checked between reads, so a read in progress finishes first. null: no limit.
    slide_timeout: float | None = None
    #: A slide whose undecodable tiles cover more than this fraction of the tissue-detection
    #: thumbnail fails; fewer are filled as background and listed in the manifest note.
    max_unreadable_fraction: float = 0.05
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS

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


@dataclass(frozen=True)
class ExtractConfig:
    """Feature extraction with a frozen encoder."""

    #: A registered encoder (see ``wsi-mil encoders``) or ``timm:<model name>``.
    encoder: str = "efficientnet_lite0"
    #: ``imagenet`` or ``random`` (plumbing tests only; recorded in every file).
    weights: str = "imagenet"
    #: A local state dict (.pth/.bin/.safetensors) to load instead, e.g. UNI's weights.
    checkpoint_path: str | None = None
    #: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "auto"
    #: Patches per batch; null: 32 on CPU, 256 on CUDA.
    batch_size: int | None = None
    #: How patches are read: ``auto`` (threads on CPU, processes on CUDA), ``threads``
    #: (a thread pool in the extracting process) or ``processes`` (torch DataLoader workers).
    loader: str = "auto"
    #: Reading threads or DataLoader worker processes; null: 1 on CPU, min(8, cores) on CUDA.
    num_workers: int | None = None
    #: Torch compute threads on CPU; null: all cores.
    threads: int | None = None
    #: ``auto`` (TorchScript freeze on CPU, eager+autocast on CUDA), ``eager``, ``jit``, ``compile``.
    freeze: str = "auto"
    #: Decode stored TIFF tiles directly when the patch grid lines up with them.
    direct_tiles: bool = True
    #: Stored feature dtype.
    dtype: str = "float32"
    #: Feature file format.
    feature_format: str = "h5"
    #: Also write CLAM's layout, RUN_DIR/clam/<encoder>/{h5_files,pt_files}/, which CLAM's main.py trains on.
    clam_files: bool = False

    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "weights": ("imagenet", "random"),
        "freeze": ("auto", "eager", "jit", "compile"),
        "loader": ("auto", "threads", "processes"),
        "dtype": ("float32", "float16"),
        "feature_format": ("h5", "zarr"),
    }

    def check(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1 (or null: all cores)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class ParallelConfig:
    """Where per-slide tasks run."""

    #: Dask worker processes on this machine; null = one per core; 0 = no Dask (debugging).
    workers: int | None = None
    #: Address of an existing Dask scheduler (tcp://host:8786); replaces the local cluster.
    scheduler: str | None = None

    def check(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: no Dask), got {self.workers}")


@dataclass(frozen=True)
class TrainConfig:
    """MIL training and cross-validation (wsi_mil.mil)."""

    #: A registered MIL head: abmil, abmil_plain or ilam (see wsi_mil.mil.list_mil_models).
    model: str = "abmil"
    #: Output folder under RUN_DIR/models/; null: the model name.
    name: str | None = None
    #: Stratified k-fold CV (grouped by patient_id); ignored when the labels CSV has a split column.
    folds: int = 5
    #: Repeated cross-validation: R rounds of k folds, each with its own fold seed.
    repeats: int = 1
    #: Fraction of each class's training patients held out for validation (0: none, no early stopping).
    val_fraction: float = 0.2
    seed: int = 0
    #: Model selection: auto (early stopping when the validation carve-out is large enough, else
    #: fixed), fixed (no carve-out, keep the last epoch) or early_stopping (see wsi_mil.mil.selection).
    selection: str = "auto"
    #: auto uses early stopping only when the validation carve-out holds at least this many bags.
    min_val_bags: int = 40
    #: Training epochs (the maximum under early stopping).
    epochs: int = 50
    #: Early stopping never keeps an epoch before this one.
    min_epochs: int = 10
    #: Stop after this many epochs without improvement of the smoothed ``monitor``.
    patience: int = 10
    monitor: str = "val_loss"
    #: The monitored value is averaged over this many trailing epochs.
    smooth_epochs: int = 3
    #: Per-channel feature standardization fitted on each fold's training instances.
    standardize: bool = True
    #: Bags per optimizer step (padded, with masked attention).
    batch_bags: int = 8
    #: Torch threads while training; null: 1 for small steps, else the usable cores (at most 8).
    threads: int | None = None
    #: Training matmuls: auto (bfloat16 where the CPU or GPU computes it natively, else float32),
    #: float32 or bfloat16. Weights, softmax, losses and evaluation stay float32.
    precision: str = "auto"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    #: Class imbalance: weighted (loss weights 1/frequency), sampler (balanced bag sampling) or none.
    balance: str = "weighted"
    #: Gradient norm clipping; 0: off.
    grad_clip: float = 1.0
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.25
    #: Residual squeeze-excitation over feature channels of the instance embeddings.
    channel_attention: bool = False
    #: CLAM's instance clustering loss on the top-k / bottom-k attended patches.
    instance_loss: bool = False
    instance_k: int = 8
    #: Weight of the instance loss; the bag loss gets 1 - this.
    instance_loss_weight: float = 0.3
    #: Training only: bags longer than this are randomly subsampled each epoch; null: never.
    max_instances: int | None = 8192
    #: Training only: fraction of instances dropped at random each epoch.
    instance_dropout: float = 0.0
    #: ILAM only: a transformer over instances (2D positional encoding, attention rollout).
    transformer: bool = False
    transformer_layers: int = 1
    transformer_heads: int = 4
    #: Longer bags attend within raster-ordered bands of this many patches (memory O(N x this)).
    transformer_max_instances: int = 4096
    #: auto (cuda when available), cpu, cuda or cuda:N.
    device: str = "auto"
    #: Bags are loaded into memory once when their float32 size is at most this; else read per epoch.
    memory_gb: float = 8.0
    #: Threads reading feature files; null: 2 x cores, at most 8.
    read_threads: int | None = None

    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "monitor": ("val_loss", "val_auc"),
        "selection": ("auto", "fixed", "early_stopping"),
        "precision": ("auto", "float32", "bfloat16"),
        "scheduler": ("cosine", "plateau", "none"),
        "balance": ("weighted", "sampler", "none"),
    }

    def check(self) -> None:
        if self.epochs < 1 or self.min_epochs < 0 or self.patience < 1:
            raise ValueError("epochs and patience must be at least 1, min_epochs at least 0")
        if self.name is not None and (not self.name or self.name.startswith(".") or any(c in self.name for c in "/\\")
                                      or any(ord(c) < 32 for c in self.name)):  # fmt: skip
            raise ValueError(f"name {self.name!r} must be one folder name under RUN_DIR/models (no '/', '\\', "
                             "leading dot or control characters)")
        if self.repeats < 1 or self.batch_bags < 1 or self.smooth_epochs < 1 or self.min_val_bags < 1:
            raise ValueError("repeats, batch_bags, smooth_epochs and min_val_bags must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1 (or null: chosen from the bag sizes)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not 0.0 <= self.instance_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout and instance_dropout must be in [0, 1)")
        if not 0.0 <= self.instance_loss_weight <= 1.0:
            raise ValueError("instance_loss_weight must be in [0, 1]")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError("max_instances must be at least 1 (or null)")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive, weight_decay and grad_clip non-negative")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class HeatmapConfig:
    """Slide heatmaps from per-patch scores (wsi_mil.explain)."""

    #: Maps to draw: attention_pct, attention_raw, attention, relevance, logit, contribution
    #: (the last two for the positive or predicted class). Empty: all of these the scores have.
    maps: tuple[str, ...] = ()
    #: Outputs per map: zarr (OME-Zarr), tiff (float32 pyramid), rgba_tiff (colour-mapped,
    #: opens in OpenSlide), png (thumbnail overlay), geojson (all maps, one file), gallery (the
    #: map's top and bottom patches, PNG), blend_tiff (level-0 colour map blended with the slide, JPEG; large).
    formats: tuple[str, ...] = ("zarr", "tiff", "rgba_tiff", "png", "geojson", "gallery")
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
    threads: int | None = None
    #: Patches per row of the ``gallery`` format: the map's highest and lowest scoring.
    gallery_k: int = 8
    #: Within-patch maps of this many most attended patches (0: none).
    cam_top_k: int = 8
    #: CAM methods (wsi_mil.explain.cam.METHODS); the default ones are cheap on a CPU.
    cam_methods: tuple[str, ...] = ("gradcam", "hirescam", "gradcam++", "layercam", "eigencam")
    #: Integrated-gradients steps.
    cam_ig_steps: int = 32
    #: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
    cam_device: str = "auto"
    #: Slide context around each explained patch, as a fraction of its side (CNN encoders):
    #: the CAM sees the surroundings instead of zero padding, which draws a ring into maps
    #: of the patch alone. 0: the patch alone.
    cam_context: float = 0.25

    FORMATS: typing.ClassVar[tuple[str, ...]] = ("zarr", "tiff", "rgba_tiff", "png", "geojson", "gallery", "blend_tiff")
    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {"scale": ("slide", "cohort", "fixed")}
    CAM_METHODS: typing.ClassVar[tuple[str, ...]] = ("gradcam", "hirescam", "gradcam++", "scorecam", "ablationcam",
                                                     "eigencam", "layercam", "fullgrad", "integrated_gradients")  # fmt: skip

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
            raise ValueError(f"range is used only with scale: fixed (scale is {self.scale}); drop it or set scale: fixed")
        if not 0.0 <= self.regions_above <= 1.0:
            raise ValueError(f"regions_above must be in [0, 1] (a position in the colour range), got {self.regions_above}")
        if not 0.0 <= self.neutral < 0.5:
            raise ValueError(f"neutral must be in [0, 0.5) (a fraction of the colour range), got {self.neutral}")
        import matplotlib

        unknown = [c for c in (self.cmap, self.diverging_cmap) if c not in matplotlib.colormaps]
        if unknown:
            raise ValueError(f"unknown colormap(s) {unknown}: cmap and diverging_cmap must be matplotlib colormaps")
        if self.chunk_size < 256 or self.chunk_size % 256 or self.thumbnail_size < 64:
            raise ValueError("chunk_size must be a multiple of 256 and thumbnail_size at least 64")
        unknown = [m for m in self.cam_methods if m not in self.CAM_METHODS]
        if unknown:
            raise ValueError(f"unknown cam_methods {unknown}; allowed: {', '.join(self.CAM_METHODS)}")
        if self.cam_top_k < 0 or self.cam_ig_steps < 1:
            raise ValueError("cam_top_k must be >= 0 and cam_ig_steps >= 1")
        if not 0.0 <= self.cam_context <= 1.0:
            raise ValueError("cam_context must be in [0, 1] (a fraction of the patch side)")


@dataclass(frozen=True)
class RunConfig:
    """``wsi-mil run``: inputs, run directory, heads and stages. Relative paths are relative
    to the config file."""

    #: Slides to tile: a folder (recursive), one slide, or a CSV with a 'path' column.
    slides: str | None = None
    #: The run directory every stage writes into.
    out: str | None = None
    #: Labels CSV (slide_id,label[,patient_id][,split]); null: stop after extraction.
    labels: str | None = None
    #: Annotations (<slide_id>.png|.geojson|.xml) for the localization table; null: none.
    masks: str | None = None
    #: MIL heads to cross-validate, each in models/<head>/; empty: train.model only.
    models: tuple[str, ...] = ()
    #: Stages to run, in this order.
    stages: tuple[str, ...] = ("tile", "extract", "train", "predict", "heatmap", "evaluate")

    STAGES: typing.ClassVar[tuple[str, ...]] = ("tile", "extract", "train", "predict", "heatmap", "evaluate")

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in self.STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; allowed: {', '.join(self.STAGES)}")


@dataclass(frozen=True)
class Config:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and gently convert) ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {key} = {value!r} should be {_describe(tp)}")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0], key, where) for item in items)
        if len(items) != len(args):
            raise ConfigError(f"{where}: {key} = {value!r} should have {len(args)} values")
        return tuple(_coerce(item, arg, key, where) for item, arg in zip(items, args, strict=True))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} should be {_describe(tp)}")


def _build(cls: type, data: dict[str, Any], section: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{section}.{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key {dotted!r}; allowed: {', '.join(sorted(names))}")
        values[key] = _coerce(value, hints[key], dotted, where)
        choices = getattr(cls, "CHOICES", {}).get(key)
        if choices and values[key] not in choices:
            raise ConfigError(f"{where}: {dotted} = {value!r}; allowed values: {', '.join(map(str, choices))}")
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            raise ConfigError(f"{where}: {section}: {error}") from error
    return instance


SECTIONS: dict[str, type] = {
    "tiling": TilingConfig,
    "tissue": TissueConfig,
    "extract": ExtractConfig,
    "parallel": ParallelConfig,
    "train": TrainConfig,
    "heatmap": HeatmapConfig,
    "run": RunConfig,
}


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping")
        sections[name] = _build(cls, section, name, where)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value parsed as YAML) -> (section, key, value)."""
    import yaml

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. tiling.target_mpp=1.0")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        return section, key, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML ({error}); e.g. tiling.target_mpp=[0.5,1.0]"
        ) from error


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Defaults, then the YAML file, then ``overrides`` (named CLI flags), then ``--set`` pairs."""
    import yaml

    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    merged = {name: dict(data.get(name) or {}) for name in SECTIONS}
    merged.update({k: v for k, v in data.items() if k not in SECTIONS})
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    for text in sets or []:
        section, key, value = parse_override(text)
        merged.setdefault(section, {})[key] = value
    if sets:
        where = f"{where} + --set"
    return config_from_dict(merged, where=where)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)
