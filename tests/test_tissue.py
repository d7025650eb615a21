"""Tissue detection on the real tiles: tissue is found, glass and pen ink are not; dense
real H&E (Kather tumour, lymphocytes; CMU-1) is not taken for ink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.config import TissueConfig
from wsi_mil.tiling.tissue import detect_pen, detect_tissue

#: The tiles are crops at various pyramid levels; detection runs as if each were a
#: thumbnail at 2 um/px, where the morphology sizes are a few pixels.
TILE_MPP = 2.0

TISSUE_TILES = [
    "tissue-level0-4302-10273-4814-10785",
    "tissue-level0-7352-11762-7864-12274",
    "tissue-level2-1784-6289-5880-10386",
    "tissue-level2-3000-7666-7096-11763",
    "tissue-level2-4640-4649-8736-8746",
    "tissue-level2-4760-5241-8856-9338",
    "high-nuclei-score-level0",
    "medium-nuclei-score-level0",
    "medium-nuclei-score-level1-2",
    "very-low-nuclei-score-level0",
]
EMPTY_TILES = ["no-tissue", "no-tissue2", "no-tissue-line", "almost-white-1", "almost-white-2", "almost-white-ihc"]
PEN_ONLY_TILES = ["no-tissue-red-pen", "no-tissue-green-pen"]
PEN_ON_TISSUE_TILES = ["high-nuclei-score-red-pen-level1", "medium-nuclei-score-green-pen-level1"]


def _tile(shared_data: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "tiles" / f"{name}.png").convert("RGB"))


def _fraction(rgb: np.ndarray, **options) -> float:
    return float(detect_tissue(rgb, mpp=TILE_MPP, config=TissueConfig(**options)).mean())


@pytest.mark.parametrize("name", TISSUE_TILES)
@pytest.mark.parametrize("method", ["auto", "hsv_otsu", "gray_otsu"])
def test_tissue_tiles_are_tissue(shared_data: Path, name: str, method: str) -> None:
    assert _fraction(_tile(shared_data, name), method=method) > 0.6


@pytest.mark.parametrize("name", EMPTY_TILES)
@pytest.mark.parametrize("method", ["auto", "hsv_otsu", "gray_otsu"])
def test_glass_is_not_tissue(shared_data: Path, name: str, method: str) -> None:
    rgb = _tile(shared_data, name)
    if name == "almost-white-2":  # pale loose tissue in its top right corner: glass elsewhere
        assert not detect_tissue(rgb, mpp=TILE_MPP, config=TissueConfig(method=method))[160:, :300].any()
        return
    assert _fraction(rgb, method=method) < 0.05


@pytest.mark.parametrize("name", PEN_ONLY_TILES)
def test_pen_marks_are_not_tissue_when_pen_removal_is_on(shared_data: Path, name: str) -> None:
    rgb = _tile(shared_data, name)
    assert _fraction(rgb, remove_pen=True) < 0.1
    assert _fraction(rgb, remove_pen=False) > 0.5  # the ink alone would pass as tissue


@pytest.mark.parametrize("name", PEN_ON_TISSUE_TILES)
def test_pen_on_tissue_removes_the_ink_and_keeps_tissue(shared_data: Path, name: str) -> None:
    rgb = _tile(shared_data, name)
    with_removal = _fraction(rgb, remove_pen=True)
    assert 0.25 < with_removal < _fraction(rgb, remove_pen=False) - 0.05


def test_small_ihc_crops(shared_data: Path) -> None:
    """Kidney IHC crops are 50x30 px at level 0 (~0.5 um/px): tissue present, glass not."""
    config = TissueConfig(min_object_um2=50.0, max_hole_um2=50.0, closing_radius_um=1.0)
    tissue = _tile(shared_data, "kidney-ihc-level0-340-520-390-550")
    assert detect_tissue(tissue, mpp=0.5, config=config).mean() > 0.5
    glass = _tile(shared_data, "almost-white-ihc")
    assert detect_tissue(glass, mpp=0.5, config=config).mean() < 0.05


def test_fluorescence_is_detected_on_a_dark_background() -> None:
    rng = np.random.default_rng(0)
    rgb = np.zeros((200, 200, 3), dtype=np.uint8)
    rgb[..., 2] = rng.integers(0, 12, (200, 200))
    block = rgb[50:150, 40:160]
    nuclei = rng.random(block.shape[:2]) < 0.4
    block[nuclei, 2] = 220
    mask = detect_tissue(rgb, mpp=8.0)
    assert mask[60:140, 50:150].mean() > 0.9
    assert mask[:40].mean() == 0 and mask[160:].mean() == 0


def test_morphology_sizes_are_physical() -> None:
    """A 100x100 um fragment is dropped at the default 20,000 um^2 minimum, a 200x200 um one kept."""
    rgb = np.full((400, 400, 3), 240, dtype=np.uint8)
    rgb[20:32, 20:32] = (200, 100, 170)  # 12 px * 8 um = 96 um
    rgb[200:225, 200:225] = (200, 100, 170)  # 25 px * 8 um = 200 um
    mask = detect_tissue(rgb, mpp=8.0)
    assert not mask[20:32, 20:32].any()
    assert mask[205:220, 205:220].all()


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tissue method"):
        detect_tissue(np.zeros((8, 8, 3), np.uint8), mpp=8.0, config=TissueConfig(method="magic"))


# --------------------------------------------------------------------------- pen ink vs dense H&E

KATHER_MPP = 0.495
#: Kather 2016 classes with dense stain: tumour and lymphocytes (dark, hematoxylin-rich),
#: stroma (strong eosin), complex stroma and mucosa.
DENSE_KATHER = ["01_TUMOR", "04_LYMPHO", "02_STROMA", "03_COMPLEX", "06_MUCOSA"]
#: Marker ink as scanned over glass (RGB; glass ~240). Green: histolab's no-tissue-green-pen
#: tile (median of its saturated pixels: 63, 171, 151). Blue: a dense blue marker, inside
#: the blue-pen boxes of DeepHistoPath's filters (R < 37, G < 95, B > 160). Black: a dark,
#: nearly neutral grey (an assumption: the shared data holds no black-pen tile).
INKS = {"blue": (35, 75, 170), "green": (60, 170, 150), "black": (40, 42, 50)}
GLASS_RGB = 240.0


def _reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))


def _pen(rgb: np.ndarray, mpp: float) -> np.ndarray:
    from skimage.color import rgb2hsv

    return detect_pen(rgb2hsv(rgb), mpp=mpp, config=TissueConfig())


def _kather_mosaic(shared_data: Path, name: str, *, factor: int, grid: int) -> np.ndarray:
    """A ``grid`` x ``grid`` quilt of the class's 150-px tiles (rotated, flipped), each
    reduced by ``factor``, at 0.495 * ``factor`` um/px."""
    files = sorted((shared_data / "kather2016-samples" / name).glob("*.tif"))
    tiles = [_reduce(np.asarray(Image.open(f).convert("RGB"))[:150, :150], factor) for f in files]
    rng = np.random.default_rng(len(name))
    rows = []
    for _ in range(grid):
        row = [np.rot90(tiles[rng.integers(len(tiles))], rng.integers(4)) for _ in range(grid)]
        rows.append(np.concatenate([t[:, ::-1] if rng.random() < 0.5 else t for t in row], axis=1))
    return np.concatenate(rows, axis=0)


def _cmu1(shared_data: Path, factor: int) -> np.ndarray:
    from wsi_mil.io.open import open_slide

    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        return _reduce(slide.read_region((0, 0), 0, slide.dimensions, as_array=True), factor)


def _real_tissue(shared_data: Path, name: str, mpp: float) -> tuple[np.ndarray, float]:
    """A real H&E image at about ``mpp`` um/px (2: a tile-like view; 4-8: detection thumbnails)."""
    if name == "CMU-1":
        factor = round(mpp / 0.499)
        return _cmu1(shared_data, factor), 0.499 * factor
    factor = round(mpp / KATHER_MPP)
    grid = 16 if factor < 8 else 32  # 1.2 mm a side at 2 um/px, 2.4 mm at 8
    return _kather_mosaic(shared_data, name, factor=factor, grid=grid), KATHER_MPP * factor


@pytest.mark.parametrize("mpp", [2, 8])
@pytest.mark.parametrize("name", [*DENSE_KATHER, "CMU-1"])
def test_dense_h_and_e_is_not_pen(shared_data: Path, name: str, mpp: float) -> None:
    """Dense tumour and strong eosin are no ink (a dark red-purple rule once took 40-80% of them)."""
    rgb, mpp = _real_tissue(shared_data, name, mpp)
    tissue = detect_tissue(rgb, mpp=mpp, config=TissueConfig(remove_pen=False))
    assert tissue.mean() > 0.3
    assert _pen(rgb, mpp)[tissue].mean() < 0.02
    kept = detect_tissue(rgb, mpp=mpp, config=TissueConfig(remove_pen=True))
    assert kept[tissue].mean() > 0.98


def _marker_strokes(shape: tuple[int, int], box: tuple[int, int, int, int], mpp: float) -> np.ndarray:
    """Ink opacity (H, W) in 0-1 of strokes that reach from the glass into the tissue in
    ``box`` (top, left, bottom, right): a ring around its lower right part and a tick over
    its upper left, 0.3 mm wide, and a 'V' 1 mm tall in 0.15 mm strokes across its top
    edge; blurred (the ink is on the coverslip, out of the scanner's focus)."""
    from PIL import ImageDraw, ImageFilter

    top, left, bottom, right = box
    height, width = bottom - top, right - left
    image = Image.new("L", shape[::-1], 0)
    draw = ImageDraw.Draw(image)
    wide, thin, letter = (max(2, round(um / mpp)) for um in (300, 150, 1000))
    draw.ellipse(
        [left + 0.45 * width, top + 0.45 * height, right + 0.25 * width, bottom + 0.25 * height],
        outline=255,
        width=wide,
    )
    draw.line(
        [
            (left - 0.3 * width, top + 0.1 * height),
            (left + 0.2 * width, top + 0.4 * height),
            (left + 0.35 * width, top - 0.2 * height),
        ],
        fill=255,
        width=wide,
        joint="curve",
    )
    x, y = left + 0.5 * width, top - letter / 2
    draw.line([(x, y), (x + letter / 3, y + letter), (x + 2 * letter / 3, y)], fill=255, width=thin)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(10 / mpp)), dtype=np.float32) / 255


def _ink(rgb: np.ndarray, opacity: np.ndarray, ink: tuple[int, int, int]) -> np.ndarray:
    """Ink over the image: transmittances multiply (Beer-Lambert), ink alone over glass is ``ink``."""
    transmittance = np.asarray(ink, dtype=np.float32) / GLASS_RGB
    return np.clip(rgb * transmittance ** opacity[..., None], 0, 255).astype(np.uint8)


def _inked_on_glass(
    shared_data: Path, name: str, mpp: float, ink: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Real tissue in the middle of glass twice its size, and the same with marker strokes:
    (rgb, inked, tissue detected without pen removal, ink opacity, mpp)."""
    tissue_rgb, mpp = _real_tissue(shared_data, name, mpp)
    height, width = tissue_rgb.shape[:2]
    rgb = np.full((2 * height, 2 * width, 3), 235, dtype=np.uint8)
    box = (height // 2, width // 2, height // 2 + height, width // 2 + width)
    rgb[box[0] : box[2], box[1] : box[3]] = tissue_rgb
    before = detect_tissue(rgb, mpp=mpp, config=TissueConfig(remove_pen=False))
    opacity = _marker_strokes(before.shape, box, mpp)
    return rgb, _ink(rgb, opacity, INKS[ink]), before, opacity, mpp


@pytest.mark.parametrize("ink", sorted(INKS))
@pytest.mark.parametrize(("name", "mpp"), [("01_TUMOR", 8), ("04_LYMPHO", 8), ("CMU-1", 4)])
def test_marker_over_dense_tissue_is_removed_and_the_tissue_beside_it_kept(
    shared_data: Path, name: str, mpp: float, ink: str
) -> None:
    """Strokes drawn over real tissue on glass at detection resolutions (CMU-1's small
    region is only 1.1 x 1.5 mm: at 4 um/px it is 280 x 370 px)."""
    _, inked, before, opacity, mpp = _inked_on_glass(shared_data, name, mpp, ink)
    stroke_on_tissue = (opacity > 0.5) & before
    assert stroke_on_tissue.sum() > 1000
    assert _pen(inked, mpp)[stroke_on_tissue].mean() > 0.9
    after = detect_tissue(inked, mpp=mpp, config=TissueConfig(remove_pen=True))
    assert after[stroke_on_tissue].mean() < 0.1
    beside = before & (opacity < 0.01)
    # CMU-1's resection margin carries teal tissue-marking dye: near a stroke it is ink too.
    assert after[beside].mean() > (0.75 if name == "CMU-1" else 0.95)


@pytest.mark.parametrize("name", ["01_TUMOR", "04_LYMPHO"])
def test_black_out_of_slide_area_is_not_black_ink(shared_data: Path, name: str) -> None:
    """A black area beside the tissue (not scanned, or a scanner border) is no ink stroke
    that would take the dark tissue next to it along."""
    from PIL import ImageFilter

    tissue_rgb, mpp = _real_tissue(shared_data, name, 8)
    height, width = tissue_rgb.shape[:2]
    rgb = np.full((height + 40, width + 80, 3), 235, dtype=np.uint8)
    rgb[20 : 20 + height, 40 : 40 + width] = tissue_rgb
    black = np.zeros(rgb.shape[:2], dtype=np.uint8)
    black[:, : 40 + width // 3] = 255
    alpha = np.asarray(Image.fromarray(black).filter(ImageFilter.GaussianBlur(3)), dtype=np.float32) / 255
    rgb = (rgb * (1 - alpha[..., None])).astype(np.uint8)
    tissue = detect_tissue(rgb, mpp=mpp, config=TissueConfig(remove_pen=False))
    assert tissue.mean() > 0.3
    assert detect_tissue(rgb, mpp=mpp, config=TissueConfig(remove_pen=True))[tissue].mean() > 0.99


def _coarse_to_fine(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Tiling's default detection of ``rgb`` as a pyramid level whose next level is 4x coarser:
    the coarse level whole, ``rgb`` only where the coarse mask is uncertain."""
    from wsi_mil.tiling.refine import refine

    refined = refine(
        _reduce(rgb, 4),
        coarse_mpp=4 * mpp,
        fine_shape=rgb.shape[:2],
        fine_mpp=mpp,
        read_fine=lambda x, y, w, h: rgb[y : y + h, x : x + w],
        config=TissueConfig(),
    )
    assert refined is not None
    return refined.mask


@pytest.mark.parametrize("ink", sorted(INKS))
@pytest.mark.parametrize("name", ["01_TUMOR", "04_LYMPHO"])
def test_marker_is_removed_by_coarse_to_fine_detection(shared_data: Path, name: str, ink: str) -> None:
    """Pen removal through the coarse level (ink found at 32 um/px, its edge refined at 8)."""
    rgb, inked, before, opacity, mpp = _inked_on_glass(shared_data, name, 8, ink)
    stroke_on_tissue = (opacity > 0.5) & before
    assert stroke_on_tissue.sum() > 1000
    after = _coarse_to_fine(inked, mpp)
    assert after[stroke_on_tissue].mean() < 0.1
    assert after[before & (opacity < 0.01)].mean() > 0.95
    assert _coarse_to_fine(rgb, mpp)[before].mean() > 0.99  # without ink: all of the tissue
