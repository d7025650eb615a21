"""The embedded demo cohort: small pyramidal slides of real H&E with planted lesions.

Each slide is one irregular piece of tissue on glass. Its normal tissue is a patchwork
of real H&E textures (with ../shared/data: tissue tiles of the CMU-1 skin slide and Kather
2016 colorectal stroma and mucosa); on half of the slides of each class a few lymphoid
aggregates (Kather LYMPHO: dense, purple, yet normal) make a nuisance both classes share.
Half of the slides carry one or two planted lesions of a visibly different real tissue
(Kather TUMOR, colorectal adenocarcinoma) whose edges are blended over ``edge_um``; the
slide label is "tumor" when a lesion is present, else "normal".

Textures are quilted from the few 150-px tiles of each tissue type: tiles with random
rotations, flips and grid offsets, feathered into each other, so no two slides are
alike. Everything is seeded: the same spec gives the same files.

Without the shared data the cohort is built from textures the package draws itself
(wsi_mil.synthetic.tissue_texture for normal tissue, denser and darker nuclei for the
lesion); the cohort's ``source`` says which.

Layout under the cohort folder (``cohort.json`` is written last, so its presence with
the same spec means a complete cohort that is reused):

- ``slides/<slide_id>.svs``: Aperio-like JPEG TIFF, levels 1/2/8, ``MPP`` in the description;
- ``masks/<slide_id>.png``: ground truth at 1/8 of level 0, 255 = lesion (empty for normal slides);
- ``annotations/<slide_id>.geojson``: the same lesions as polygons in level-0 pixels (QuPath import);
- ``labels.csv``: ``slide_id,label``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.store.atomic import atomic_output, remove_path
from wsi_mil.synthetic import GLASS, tissue_texture, write_image_slide

logger = logging.getLogger(__name__)

COHORT_VERSION = 1
COHORT_FILE = "cohort.json"
#: Ground-truth grids are this many level-0 pixels per cell (masks/<slide_id>.png too).
MASK_DOWNSAMPLE = 8
KATHER_NORMAL = (("02_STROMA",), ("06_MUCOSA",))
KATHER_LESION = "01_TUMOR"
KATHER_DISTRACTOR = "04_LYMPHO"
CMU_SLIDE = "slides/CMU-1-Small-Region.svs"


@dataclass(frozen=True)
class CohortSpec:
    """What the demo cohort looks like; the same spec (and source) gives the same files."""

    n_slides: int = 24
    #: Level-0 size in pixels at ``mpp`` (4096 x 3072 at 0.5 um/px: 2.0 x 1.5 mm).
    width: int = 4096
    height: int = 3072
    mpp: float = 0.5
    #: Fraction of slides with a planted lesion (label "tumor").
    positive_fraction: float = 0.5
    #: Lesion area as a fraction of the slide's tissue area, drawn per positive slide.
    lesion_area: tuple[float, float] = (0.1, 0.25)
    #: Width of the blended lesion edge, in um.
    edge_um: float = 40.0
    #: Fraction of slides (of each class) with lymphoid aggregates, a normal look-alike.
    distractor_fraction: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class TissueBank:
    """Tiles (S, S, 3) uint8 per tissue kind; ``normal`` holds one tuple per normal tissue type."""

    normal: tuple[tuple[np.ndarray, ...], ...]
    lesion: tuple[np.ndarray, ...]
    distractor: tuple[np.ndarray, ...]
    source: str


@dataclass(frozen=True)
class Cohort:
    root: Path
    slides: Path
    masks: Path
    annotations: Path
    labels: Path
    source: str
    slide_ids: tuple[str, ...]


def load_tissue_bank(data: Path | None) -> TissueBank:
    """Real H&E tiles from the shared data folder, or drawn textures when it is None."""
    if data is None:
        return _generated_bank()
    from PIL import Image

    def kather(name: str) -> tuple[np.ndarray, ...]:
        files = sorted((data / "kather2016-samples" / name).glob("*.tif"))
        if not files:
            raise FileNotFoundError(f"{data / 'kather2016-samples' / name}: no Kather tiles")
        return tuple(np.asarray(Image.open(f).convert("RGB"))[:150, :150] for f in files)

    normal = [_cmu_tiles(data / CMU_SLIDE)] + [sum((kather(n) for n in names), ()) for names in KATHER_NORMAL]
    return TissueBank(tuple(_harmonize(tiles) for tiles in normal), _harmonize(kather(KATHER_LESION)),
                      _harmonize(kather(KATHER_DISTRACTOR)), source=f"real H&E from {data}")  # fmt: skip


def _harmonize(tiles: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Match each tile's Lab mean and std to its group's (Reinhard), so quilted tiles of one
    tissue type do not make a patchwork of stain shades."""
    from skimage.color import lab2rgb, rgb2lab

    import warnings

    labs = [rgb2lab(t) for t in tiles]
    mean = np.mean([lab.mean((0, 1)) for lab in labs], axis=0)
    std = np.mean([lab.std((0, 1)) for lab in labs], axis=0)
    out = []
    for lab in labs:
        matched = (lab - lab.mean((0, 1))) / (lab.std((0, 1)) + 1e-6) * std + mean
        with warnings.catch_warnings():  # a few out-of-gamut pixels are clipped, as intended
            warnings.simplefilter("ignore", UserWarning)
            rgb = lab2rgb(matched)
        out.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return tuple(out)


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


def _generated_bank() -> TissueBank:
    normal = (tuple(tissue_texture(150, seed=s) for s in range(4)),)
    lesion = tuple(_dense_nuclei(150, seed=s, base=(176, 112, 178), count=1 / 110, radius=7, colour=(72, 36, 118))
                   for s in range(3))  # fmt: skip
    distractor = tuple(_dense_nuclei(150, seed=s, base=(214, 186, 222), count=1 / 45, radius=3, colour=(60, 40, 120))
                       for s in range(3))  # fmt: skip
    return TissueBank(normal, lesion, distractor, source="generated textures (shared data not found)")


def _dense_nuclei(size: int, *, seed: int, base: tuple[int, int, int], count: float, radius: int,
                  colour: tuple[int, int, int]) -> np.ndarray:  # fmt: skip
    """A (size, size, 3) texture of round nuclei on a flat stain, for the generated fallback."""
    rng = np.random.default_rng(seed + 1000)
    out = np.empty((size, size, 3), np.float32)
    out[:] = base
    out += rng.normal(0, 8, (size, size, 1))
    yy, xx = np.mgrid[:size, :size]
    for x, y in rng.integers(0, size, (int(size * size * count), 2)):
        r = radius * rng.uniform(0.7, 1.3)
        out[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


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
        total = np.zeros(acc.shape[:2] + (1,), np.float32)
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
                acc[ay : ay + size, ax : ax + size] += self.variants[self.choice[row, col], self.turns[row, col],
                                                                     self.flips[row, col]]  # fmt: skip
                total[ay : ay + size, ax : ax + size] += self.weight
        return (acc / np.maximum(total, 1e-6))[size : size + bottom - top, size : size + self.width]


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-9)


def _blob(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float,
          rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(H, W) bool: an ellipse whose radius wobbles with a few low angular harmonics."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / radii[0], (-s * dx + c * dy) / radii[1]
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(rng.uniform(0.05, 0.18) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    return np.hypot(u, v) <= wobble


def _layout(spec: CohortSpec, rng: np.random.Generator, *, positive: bool, distractor: bool, n_normal: int) -> dict:
    """Low-resolution (1/MASK_DOWNSAMPLE) layers: tissue, lesion, distractor and normal-type weights."""
    from scipy.ndimage import binary_fill_holes, distance_transform_edt, gaussian_filter, label

    shape = (spec.height // MASK_DOWNSAMPLE, spec.width // MASK_DOWNSAMPLE)
    h, w = shape
    centre = (w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h)
    tissue = _blob(shape, centre, (w * rng.uniform(0.36, 0.44), h * rng.uniform(0.34, 0.42)), rng.uniform(-0.3, 0.3), rng)
    tissue &= _smooth_field(shape, 12, rng) > -1.6  # a few tears and holes
    labels, count = label(tissue)
    if count > 1:
        tissue = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    tissue = binary_fill_holes(tissue) & (_smooth_field(shape, 4, rng) > -2.7)
    scale = spec.mpp * MASK_DOWNSAMPLE  # um per low-res pixel
    lesion = np.zeros(shape, bool)
    if positive:
        area = rng.uniform(*spec.lesion_area) * tissue.sum()
        parts = int(rng.integers(1, 3))
        depth = distance_transform_edt(tissue)
        for _ in range(parts):
            radius = np.sqrt(area / parts / np.pi)
            candidates = np.argwhere(depth >= min(depth.max(), radius * 0.9) * 0.9)
            y, x = candidates[rng.integers(len(candidates))]
            ratio = rng.uniform(0.7, 1.4)
            lesion |= _blob(shape, (x, y), (radius * ratio, radius / ratio), rng.uniform(0, np.pi), rng)
        lesion &= tissue
    spots = np.zeros(shape, bool)
    if distractor:
        for _ in range(int(rng.integers(2, 5))):
            candidates = np.argwhere(tissue & ~lesion)
            y, x = candidates[rng.integers(len(candidates))]
            radius = rng.uniform(120, 220) / scale
            spots |= _blob(shape, (x, y), (radius, radius * rng.uniform(0.7, 1.0)), rng.uniform(0, np.pi), rng)
        spots &= tissue & ~lesion
    edge = spec.edge_um / scale / 2
    fields = np.stack([_smooth_field(shape, 160 / scale, rng) for _ in range(n_normal)])
    mix = np.exp(3.0 * fields)
    return {
        "tissue": gaussian_filter(tissue.astype(np.float32), 1.0),
        "lesion": gaussian_filter(lesion.astype(np.float32), edge) * tissue,
        "distractor": gaussian_filter(spots.astype(np.float32), edge / 2),
        "normal": mix / mix.sum(0),
        "truth": lesion,
    }


def _upsample(layer: np.ndarray, top: int, bottom: int, width: int) -> np.ndarray:
    """Bilinear rows ``top:bottom`` of a 1/MASK_DOWNSAMPLE layer at level 0, (rows, width, 1) float32."""
    from PIL import Image

    box = (0.0, top / MASK_DOWNSAMPLE, layer.shape[1], bottom / MASK_DOWNSAMPLE)
    image = Image.fromarray(np.ascontiguousarray(layer, np.float32), mode="F")
    return np.asarray(image.resize((width, bottom - top), Image.Resampling.BILINEAR, box=box))[..., None]


def render_slide(spec: CohortSpec, bank: TissueBank, index: int, *, positive: bool, distractor: bool,
                 band: int = 512) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(H, W, 3) uint8 slide image and (H/8, W/8) bool lesion truth of slide ``index``."""
    rng = np.random.default_rng([spec.seed, index])
    layers = _layout(spec, rng, positive=positive, distractor=distractor, n_normal=len(bank.normal))
    quilts = [Quilt(tiles, spec.width, spec.height, rng) for tiles in bank.normal]
    lesion_quilt = Quilt(bank.lesion, spec.width, spec.height, rng)
    distractor_quilt = Quilt(bank.distractor, spec.width, spec.height, rng)
    image = np.empty((spec.height, spec.width, 3), np.uint8)
    glass = np.asarray(GLASS, np.float32)
    for top in range(0, spec.height, band):
        bottom = min(spec.height, top + band)
        up = lambda layer: _upsample(layer, top, bottom, spec.width)  # noqa: E731
        tissue = sum(up(weight) * quilt.render(top, bottom, (weight > 1e-3) & (layers["tissue"] > 0))
                     for weight, quilt in zip(layers["normal"], quilts, strict=True))  # fmt: skip
        if distractor:
            spots = up(layers["distractor"])
            tissue = tissue * (1 - spots) + distractor_quilt.render(top, bottom, layers["distractor"] > 1e-3) * spots
        if positive:
            lesion = up(layers["lesion"])
            tissue = tissue * (1 - lesion) + lesion_quilt.render(top, bottom, layers["lesion"] > 1e-3) * lesion
        alpha = up(layers["tissue"])
        noise = rng.normal(0, 2.0, (bottom - top, spec.width, 1)).astype(np.float32)
        image[top:bottom] = np.clip(tissue * alpha + (glass + noise) * (1 - alpha), 0, 255).astype(np.uint8)
    return _stain_jitter(image, rng), layers["truth"]


def _stain_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale each channel's optical density a little (slide-to-slide staining variation)."""
    levels = np.arange(256, dtype=np.float64)
    density = -np.log((levels + 1) / 256)
    luts = [np.clip(256 * np.exp(-density * g) - 1, 0, 255).astype(np.uint8) for g in rng.normal(1.0, 0.06, 3)]
    return np.stack([lut[image[..., c]] for c, lut in enumerate(luts)], axis=-1)


def truth_geojson(truth: np.ndarray, *, downsample: int = MASK_DOWNSAMPLE) -> dict:
    """Lesion outlines of a (H, W) bool grid as a GeoJSON FeatureCollection in level-0 pixels."""
    from skimage.measure import find_contours

    padded = np.pad(truth.astype(np.float32), 1)
    features = []
    for contour in find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        ring = [[round(float(x - 0.5) * downsample, 1), round(float(y - 0.5) * downsample, 1)] for y, x in contour]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}})  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def _assignments(spec: CohortSpec) -> list[tuple[str, bool, bool]]:
    """(slide_id, positive, distractor) per slide: classes and distractors shuffled, seeded."""
    rng = np.random.default_rng([spec.seed, 10**6])
    n_pos = round(spec.n_slides * spec.positive_fraction)
    positive = rng.permutation(np.arange(spec.n_slides) < n_pos)
    distractor = np.zeros(spec.n_slides, bool)
    for kind in (True, False):
        members = np.flatnonzero(positive == kind)
        chosen = rng.permutation(members)[: round(len(members) * spec.distractor_fraction)]
        distractor[chosen] = True
    return [(f"demo-{i:02d}", bool(positive[i]), bool(distractor[i])) for i in range(spec.n_slides)]


def _cohort(root: Path, source: str, slide_ids: tuple[str, ...]) -> Cohort:
    return Cohort(root, root / "slides", root / "masks", root / "annotations", root / "labels.csv", source, slide_ids)


def _write_slide(cohort: Cohort, spec: CohortSpec, bank: TissueBank, slide_id: str, *, positive: bool,
                 distractor: bool) -> None:  # fmt: skip
    from PIL import Image

    image, truth = render_slide(spec, bank, int(slide_id.split("-")[1]), positive=positive, distractor=distractor)
    with atomic_output(cohort.slides / f"{slide_id}.svs") as tmp:
        write_image_slide(tmp, image, mpp=spec.mpp)
    buffer = io.BytesIO()
    Image.fromarray((truth * 255).astype(np.uint8)).save(buffer, format="PNG")
    with atomic_output(cohort.masks / f"{slide_id}.png") as tmp:
        tmp.write_bytes(buffer.getvalue())
    with atomic_output(cohort.annotations / f"{slide_id}.geojson") as tmp:
        tmp.write_text(json.dumps(truth_geojson(truth)))
    logger.info("demo cohort: %s (%s%s)", slide_id, "tumor" if positive else "normal",
                ", lymphoid aggregates" if distractor else "")  # fmt: skip


def build_cohort(root: str | Path, *, spec: CohortSpec | None = None, data: Path | None = None,
                 rebuild: bool = False, workers: int | None = None) -> Cohort:  # fmt: skip
    """Write (or reuse, when complete with the same spec and source) the demo cohort under ``root``;
    ``workers`` processes render slides (default: one per core)."""
    spec = spec or CohortSpec()
    root = Path(root)
    bank = load_tissue_bank(data)
    record = json.loads(json.dumps({"version": COHORT_VERSION, "spec": dataclasses.asdict(spec), "source": bank.source}))
    assignments = _assignments(spec)
    cohort = _cohort(root, bank.source, tuple(a[0] for a in assignments))
    marker = root / COHORT_FILE
    if not rebuild and marker.exists() and json.loads(marker.read_text()).get("cohort") == record:
        logger.info("demo cohort: reusing %s", root)
        return cohort
    for folder in (cohort.slides, cohort.masks, cohort.annotations, marker, cohort.labels):
        remove_path(folder)
    logger.info("demo cohort: writing %d slides from %s into %s", spec.n_slides, bank.source, root)
    workers = max(1, min(workers or os.cpu_count() or 1, spec.n_slides))
    if workers == 1:
        for slide_id, positive, distractor in assignments:
            _write_slide(cohort, spec, bank, slide_id, positive=positive, distractor=distractor)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_write_slide, cohort, spec, bank, slide_id, positive=positive, distractor=distractor)
                       for slide_id, positive, distractor in assignments]  # fmt: skip
            for future in futures:
                future.result()
    with atomic_output(cohort.labels) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        writer.writerows([slide_id, "tumor" if positive else "normal"] for slide_id, positive, _ in assignments)
    slides = [{"slide_id": s, "label": "tumor" if p else "normal", "lymphoid_aggregates": d} for s, p, d in assignments]
    with atomic_output(marker) as tmp:
        tmp.write_text(json.dumps({"cohort": record, "slides": slides}, indent=2))
    return cohort
