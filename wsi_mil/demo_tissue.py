"""Real H&E tissue for the demo cohort: tile banks per tissue kind, and the quilts drawn from them.

Every tile comes from the real H&E embedded in the package (``wsi_mil/data``, see its
README for licences): tissue-filled tiles of the CMU-1 skin slide (CC0) and Kather 2016
colorectal tiles (CC BY 4.0). Tissue kinds:

- normal: CMU-1 skin, Kather STROMA and MUCOSA, each harmonized within itself (Reinhard);
- lesion: Kather TUMOR (colorectal adenocarcinoma), colour-matched to the pooled normal
  tissue, so the lesion differs in morphology and not in its stain;
- look-alikes, normal yet dark and dense, on slides of both classes: lymphoid aggregates
  (Kather LYMPHO), necrotic debris (Kather DEBRIS) and dense, strongly stained stroma
  (Kather STROMA at 1.6 x its optical density). Thick tissue folds are drawn by the
  cohort itself (demo_cohort.py), as doubled optical density over whatever lies beneath.

A :class:`Quilt` turns the few 150-px tiles of a kind into a slide-size texture: tiles with
random rotations, flips and grid offsets, feathered into each other, so no two slides
are alike.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.datasets import embedded_data_dir

#: Level-0 pixels per cell of the layout grids (the cohort's masks are at this downsample too).
MASK_DOWNSAMPLE = 8
TILE = 150
CMU_SLIDE = "slides/CMU-1-Small-Region.svs"
KATHER = "kather2016-samples"
KATHER_NORMAL = ("02_STROMA", "06_MUCOSA")
KATHER_LESION = "01_TUMOR"
#: Look-alike kind -> (Kather class, optical-density gain).
LOOKALIKES = {"lymphoid": ("04_LYMPHO", 1.0), "debris": ("05_DEBRIS", 1.0), "dense_stroma": ("02_STROMA", 1.6)}


@dataclass(frozen=True)
class TissueBank:
    """Tiles (TILE, TILE, 3) uint8 per tissue kind; ``normal`` holds one tuple per normal tissue type."""

    normal: tuple[tuple[np.ndarray, ...], ...]
    lesion: tuple[np.ndarray, ...]
    lookalikes: dict[str, tuple[np.ndarray, ...]]
    source: str


def load_tissue_bank(data: Path | None = None) -> TissueBank:
    """The demo's tissue from ``data`` (a folder in the layout of wsi_mil/data; default: the embedded copy)."""
    from PIL import Image

    data = Path(data) if data is not None else embedded_data_dir()

    def kather(name: str) -> tuple[np.ndarray, ...]:
        files = sorted((data / KATHER / name).glob("*.tif"))
        if not files:
            raise FileNotFoundError(f"{data / KATHER / name}: no Kather tiles; reinstall wsi-mil (package data)")
        return tuple(np.asarray(Image.open(f).convert("RGB"))[:TILE, :TILE] for f in files)

    normal = tuple(_reinhard(tiles) for tiles in [_cmu_tiles(data / CMU_SLIDE), *map(kather, KATHER_NORMAL)])
    pooled = _lab_stats(sum(normal, ()))
    lookalikes = {kind: _optical_gain(_reinhard(kather(name)), gain) for kind, (name, gain) in LOOKALIKES.items()}
    return TissueBank(normal, _reinhard(kather(KATHER_LESION), target=pooled), lookalikes, source=f"real H&E ({data})")


def _lab_stats(tiles: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over tiles of each tile's Lab mean and std."""
    from skimage.color import rgb2lab

    labs = [rgb2lab(t) for t in tiles]
    return np.mean([lab.mean((0, 1)) for lab in labs], axis=0), np.mean([lab.std((0, 1)) for lab in labs], axis=0)


def _reinhard(
    tiles: tuple[np.ndarray, ...], *, target: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, ...]:
    """Match each tile's Lab mean and std to ``target`` (default: its own group's), Reinhard et al. 2001:
    quilted tiles of one type make no patchwork of shades, and the lesion takes the normal stain."""
    from skimage.color import lab2rgb, rgb2lab

    mean, std = target if target is not None else _lab_stats(tiles)
    out = []
    for tile in tiles:
        lab = rgb2lab(tile)
        matched = (lab - lab.mean((0, 1))) / (lab.std((0, 1)) + 1e-6) * std + mean
        with warnings.catch_warnings():  # a few out-of-gamut pixels are clipped, as intended
            warnings.simplefilter("ignore", UserWarning)
            rgb = lab2rgb(matched)
        out.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return tuple(out)


def _optical_gain(tiles: tuple[np.ndarray, ...], gain: float) -> tuple[np.ndarray, ...]:
    """Tiles with their optical density scaled by ``gain`` (thicker section or stronger stain)."""
    if gain == 1.0:
        return tiles
    return tuple(optical_density_scale(t.astype(np.float32), gain).round().astype(np.uint8) for t in tiles)


def optical_density_scale(rgb: np.ndarray, gain: np.ndarray | float) -> np.ndarray:
    """(..., 3) float RGB in 0-255 with its optical density multiplied by ``gain`` (Beer-Lambert)."""
    transmittance = np.clip(rgb, 1.0, 255.0) / 255.0
    return 255.0 * transmittance ** np.asarray(gain, np.float32)


def _cmu_tiles(path: Path, size: int = 150) -> tuple[np.ndarray, ...]:
    """Tissue-filled tiles of the CMU-1 small region (CC0 Aperio H&E, 0.499 um/px)."""
    from wsi_mil.io.open import open_slide

    with open_slide(path) as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions, as_array=True)
    rgb = image.astype(np.float32)
    saturation = (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)
    tiles = []
    for y in range(0, image.shape[0] - size + 1, size):
        for x in range(0, image.shape[1] - size + 1, size):
            if (saturation[y : y + size, x : x + size] > 0.12).mean() > 0.85:
                tiles.append(image[y : y + size, x : x + size].copy())
    return tuple(tiles)


class Quilt:
    """A texture canvas of feathered, randomly rotated/flipped tiles, rendered band by band."""

    def __init__(self, tiles: tuple[np.ndarray, ...], width: int, height: int, rng: np.random.Generator) -> None:
        self.size = size = tiles[0].shape[0]
        self.stride = stride = int(size * 0.8)
        ramp = np.linspace(0.02, 1.0, size - stride, dtype=np.float32)
        profile = np.ones(size, np.float32)
        profile[: len(ramp)], profile[-len(ramp) :] = ramp, ramp[::-1]
        self.weight = np.outer(profile, profile)[..., None]
        self.x0, self.y0 = (int(v) for v in rng.integers(-stride, 0, 2))
        cols, rows = (width - self.x0) // stride + 1, (height - self.y0) // stride + 1
        self.choice = rng.integers(0, len(tiles), (rows, cols))
        self.turns = rng.integers(0, 4, (rows, cols))
        self.flips = rng.integers(0, 2, (rows, cols))
        self.width = width
        # the weight is symmetric under rotation and flips: pre-weight each tile's 8 variants once
        self.variants = {}
        for index, tile in enumerate(tiles):
            weighted = tile.astype(np.float32) * self.weight
            for turns in range(4):
                turned = np.rot90(weighted, turns)
                self.variants[index, turns, 0], self.variants[index, turns, 1] = turned, turned[:, ::-1]

    def render(self, top: int, bottom: int, need: np.ndarray) -> np.ndarray:
        """Rows ``top:bottom`` of the canvas, (bottom - top, width, 3) float32, painted only where
        ``need`` (a bool grid at 1/MASK_DOWNSAMPLE of the canvas) is set."""
        from scipy.ndimage import binary_dilation

        size, stride, cell = self.size, self.stride, MASK_DOWNSAMPLE
        need = binary_dilation(need, iterations=2)  # bilinear weights reach a cell beyond the layer
        acc = np.zeros((bottom - top + 2 * size, self.width + 2 * size, 3), np.float32)
        total = np.zeros((*acc.shape[:2], 1), np.float32)
        first = max(0, -((self.y0 + size - top) // stride))  # ceil: tiles ending above top are skipped
        last = min(len(self.choice) - 1, (bottom - self.y0) // stride)
        for row in range(first, last + 1):
            y = self.y0 + row * stride
            need_row = need[max(0, y // cell) : max(0, (y + size) // cell + 1)]
            if not need_row.any():
                continue
            for col in range(self.choice.shape[1]):
                x = self.x0 + col * stride
                if not need_row[:, max(0, x // cell) : max(0, (x + size) // cell + 1)].any():
                    continue
                ay, ax = y - top + size, x + size
                acc[ay : ay + size, ax : ax + size] += self.variants[
                    self.choice[row, col], self.turns[row, col], self.flips[row, col]
                ]
                total[ay : ay + size, ax : ax + size] += self.weight
        return (acc / np.maximum(total, 1e-6))[size : size + bottom - top, size : size + self.width]
