"""The embedded demo cohort: small pyramidal slides of real H&E with planted lesions.

Each slide is one irregular piece of tissue on glass, quilted from the real H&E that ships
in the package (demo_tissue.py): normal tissue is a patchwork of CMU-1 skin and Kather
colorectal stroma and mucosa. Half of the slides carry one or two planted lesions of Kather
TUMOR (colorectal adenocarcinoma) whose edges are blended over ``edge_um``; the slide
label is "tumor" when a lesion is present, else "normal".

The cohort is built so that stain alone does not give the answer. The lesion is
colour-matched to the normal tissue, and every slide, whatever its label, carries normal
look-alikes drawn from the same distribution: lymphoid aggregates, necrotic debris, dense
strongly stained stroma and thick tissue folds (doubled optical density). These are the
darkest, most hematoxylin-rich places of a slide, so a "darkest window" or "mean
hematoxylin" statistic has nothing to find; the demo prints such a baseline
(wsi_mil.explain.stain_baseline) beside every learned result. Everything is seeded: the
same spec gives the same files.

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

from wsi_mil.demo_tissue import MASK_DOWNSAMPLE, Quilt, TissueBank, load_tissue_bank, optical_density_scale
from wsi_mil.store.atomic import atomic_output, remove_path
from wsi_mil.synthetic import GLASS, write_image_slide

logger = logging.getLogger(__name__)

COHORT_VERSION = 2
COHORT_FILE = "cohort.json"
#: Look-alike kind -> (count range per slide, radius range in um); folds are long and thin.
LOOKALIKE_SPOTS = {
    "lymphoid": ((1, 4), (100, 200)),
    "debris": ((0, 3), (80, 160)),
    "dense_stroma": ((0, 3), (150, 300)),
}
FOLDS = ((0, 3), (250, 600), (25, 60))  # count, half-length um, half-width um
__all__ = ["MASK_DOWNSAMPLE", "Cohort", "CohortSpec", "build_cohort", "render_slide"]


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
    seed: int = 0


@dataclass(frozen=True)
class Cohort:
    root: Path
    slides: Path
    masks: Path
    annotations: Path
    labels: Path
    source: str
    slide_ids: tuple[str, ...]


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-9)


def _blob(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(H, W) bool: an ellipse whose radius wobbles with a few low angular harmonics."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / radii[0], (-s * dx + c * dy) / radii[1]
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(rng.uniform(0.05, 0.18) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    return np.hypot(u, v) <= wobble


def _spots(
    shape: tuple[int, int],
    free: np.ndarray,
    rng: np.random.Generator,
    count: int,
    radii: tuple[float, float],
    *,
    elongation: tuple[float, float] = (0.7, 1.0),
) -> np.ndarray:
    """(H, W) bool: ``count`` wobbly ellipses (radii in layout pixels) centred in ``free``."""
    spots = np.zeros(shape, bool)
    candidates = np.argwhere(free)
    for _ in range(count if len(candidates) else 0):
        y, x = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(*radii)
        spots |= _blob(shape, (x, y), (radius, radius * rng.uniform(*elongation)), rng.uniform(0, np.pi), rng)
    return spots


def _layout(spec: CohortSpec, rng: np.random.Generator, *, positive: bool, n_normal: int) -> dict:
    """Low-resolution (1/MASK_DOWNSAMPLE) layers: tissue, lesion, look-alikes, folds and normal-type weights.
    The look-alikes and folds are drawn from the same distribution whatever the label."""
    from scipy.ndimage import binary_fill_holes, distance_transform_edt, gaussian_filter, label

    shape = (spec.height // MASK_DOWNSAMPLE, spec.width // MASK_DOWNSAMPLE)
    h, w = shape
    centre = (w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h)
    tissue = _blob(
        shape, centre, (w * rng.uniform(0.36, 0.44), h * rng.uniform(0.34, 0.42)), rng.uniform(-0.3, 0.3), rng
    )
    tissue &= _smooth_field(shape, 12, rng) > -1.6  # a few tears and holes
    labels, count = label(tissue)
    if count > 1:
        tissue = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    tissue = binary_fill_holes(tissue) & (_smooth_field(shape, 4, rng) > -2.7)
    scale = spec.mpp * MASK_DOWNSAMPLE  # um per low-res pixel
    edge = spec.edge_um / scale / 2
    # look-alikes first, from their own stream: the same draws on a slide whatever its label
    look_rng = np.random.default_rng(rng.integers(2**32))
    lookalikes = {}
    for kind, ((low, high), (r0, r1)) in LOOKALIKE_SPOTS.items():
        spots = _spots(shape, tissue, look_rng, int(look_rng.integers(low, high)), (r0 / scale, r1 / scale))
        lookalikes[kind] = gaussian_filter((spots & tissue).astype(np.float32), edge / 2)
    (low, high), length, width = FOLDS
    folds = _spots(
        shape,
        tissue,
        look_rng,
        int(look_rng.integers(low, high)),
        (length[0] / scale, length[1] / scale),
        elongation=(width[0] / length[1], width[1] / length[0]),
    )
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
    fields = np.stack([_smooth_field(shape, 160 / scale, rng) for _ in range(n_normal)])
    mix = np.exp(3.0 * fields)
    return {
        "tissue": gaussian_filter(tissue.astype(np.float32), 1.0),
        "lesion": gaussian_filter(lesion.astype(np.float32), edge) * tissue,
        "lookalikes": lookalikes,
        "folds": gaussian_filter((folds & tissue).astype(np.float32), 1.5),
        "normal": mix / mix.sum(0),
        "truth": lesion,
    }


def _upsample(layer: np.ndarray, top: int, bottom: int, width: int) -> np.ndarray:
    """Bilinear rows ``top:bottom`` of a 1/MASK_DOWNSAMPLE layer at level 0, (rows, width, 1) float32."""
    from PIL import Image

    box = (0.0, top / MASK_DOWNSAMPLE, layer.shape[1], bottom / MASK_DOWNSAMPLE)
    image = Image.fromarray(np.ascontiguousarray(layer, np.float32), mode="F")
    return np.asarray(image.resize((width, bottom - top), Image.Resampling.BILINEAR, box=box))[..., None]


def render_slide(
    spec: CohortSpec, bank: TissueBank, index: int, *, positive: bool, band: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 slide image and (H/8, W/8) bool lesion truth of slide ``index``."""
    rng = np.random.default_rng([spec.seed, index])
    layers = _layout(spec, rng, positive=positive, n_normal=len(bank.normal))
    quilts = [Quilt(tiles, spec.width, spec.height, rng) for tiles in bank.normal]
    lesion_quilt = Quilt(bank.lesion, spec.width, spec.height, rng)
    lookalike_quilts = {
        kind: Quilt(bank.lookalikes[kind], spec.width, spec.height, rng) for kind in layers["lookalikes"]
    }
    image = np.empty((spec.height, spec.width, 3), np.uint8)
    glass = np.asarray(GLASS, np.float32)
    for top in range(0, spec.height, band):
        bottom = min(spec.height, top + band)

        def up(layer: np.ndarray, top: int = top, bottom: int = bottom) -> np.ndarray:
            return _upsample(layer, top, bottom, spec.width)

        tissue = sum(
            up(weight) * quilt.render(top, bottom, (weight > 1e-3) & (layers["tissue"] > 0))
            for weight, quilt in zip(layers["normal"], quilts, strict=True)
        )
        for kind, layer in layers["lookalikes"].items():
            if (layer[top // MASK_DOWNSAMPLE : bottom // MASK_DOWNSAMPLE + 2] > 1e-3).any():
                spots = up(layer)
                tissue = tissue * (1 - spots) + lookalike_quilts[kind].render(top, bottom, layer > 1e-3) * spots
        if positive:
            lesion = up(layers["lesion"])
            tissue = tissue * (1 - lesion) + lesion_quilt.render(top, bottom, layers["lesion"] > 1e-3) * lesion
        tissue = optical_density_scale(tissue, 1.0 + up(layers["folds"]))  # a fold: two layers of section
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
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _assignments(spec: CohortSpec) -> list[tuple[str, bool]]:
    """(slide_id, positive) per slide: classes shuffled, seeded."""
    rng = np.random.default_rng([spec.seed, 10**6])
    n_pos = round(spec.n_slides * spec.positive_fraction)
    positive = rng.permutation(np.arange(spec.n_slides) < n_pos)
    return [(f"demo-{i:02d}", bool(positive[i])) for i in range(spec.n_slides)]


def _cohort(root: Path, source: str, slide_ids: tuple[str, ...]) -> Cohort:
    return Cohort(root, root / "slides", root / "masks", root / "annotations", root / "labels.csv", source, slide_ids)


def _write_slide(cohort: Cohort, spec: CohortSpec, bank: TissueBank, slide_id: str, *, positive: bool) -> None:
    from PIL import Image

    image, truth = render_slide(spec, bank, int(slide_id.split("-")[1]), positive=positive)
    with atomic_output(cohort.slides / f"{slide_id}.svs") as tmp:
        write_image_slide(tmp, image, mpp=spec.mpp)
    buffer = io.BytesIO()
    Image.fromarray((truth * 255).astype(np.uint8)).save(buffer, format="PNG")
    with atomic_output(cohort.masks / f"{slide_id}.png") as tmp:
        tmp.write_bytes(buffer.getvalue())
    with atomic_output(cohort.annotations / f"{slide_id}.geojson") as tmp:
        tmp.write_text(json.dumps(truth_geojson(truth)))
    logger.info("demo cohort: %s (%s)", slide_id, "tumor" if positive else "normal")


def build_cohort(
    root: str | Path,
    *,
    spec: CohortSpec | None = None,
    data: Path | None = None,
    rebuild: bool = False,
    workers: int | None = None,
) -> Cohort:
    """Write (or reuse, when complete with the same spec and source) the demo cohort under ``root``;
    ``workers`` processes render slides (default: one per core)."""
    spec = spec or CohortSpec()
    root = Path(root)
    bank = load_tissue_bank(data)
    record = json.loads(
        json.dumps({"version": COHORT_VERSION, "spec": dataclasses.asdict(spec), "source": bank.source})
    )
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
        for slide_id, positive in assignments:
            _write_slide(cohort, spec, bank, slide_id, positive=positive)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(_write_slide, cohort, spec, bank, slide_id, positive=positive)
                for slide_id, positive in assignments
            ]
            for future in futures:
                future.result()
    with atomic_output(cohort.labels) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        writer.writerows([slide_id, "tumor" if positive else "normal"] for slide_id, positive in assignments)
    slides = [{"slide_id": s, "label": "tumor" if p else "normal"} for s, p in assignments]
    with atomic_output(marker) as tmp:
        tmp.write_text(json.dumps({"cohort": record, "slides": slides}, indent=2))
    return cohort
