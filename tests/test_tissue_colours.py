"""The fast pieces of tissue detection equal the scikit-image definitions they replace, bit for bit:
saturation and value from the max and min channel, hue where asked, the OpenCV median, closing
and small-object removal."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color, filters, morphology

from wsi_mil.config import TissueConfig
from wsi_mil.tiling import colours as hsv_channels
from wsi_mil.tiling import mask_ops, tissue


def _every_max_min_pair() -> np.ndarray:
    """One pixel for each (max, min) channel pair, the third channel anywhere in between."""
    high, low = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    keep = low <= high
    high, low = high[keep], low[keep]
    middle = (high + low) // 2
    rgb = np.stack([high, middle, low], axis=-1).astype(np.uint8)
    return np.concatenate([rgb, rgb[:, ::-1], rgb[:, [1, 2, 0]]])[None]  # every channel as max, mid and min


def _random_with_ties(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    rgb[: shape[0] // 3, :, 1] = rgb[: shape[0] // 3, :, 0]  # red = green: hue on sector edges
    rgb[shape[0] // 3 : 2 * shape[0] // 3, :, 2] = rgb[shape[0] // 3 : 2 * shape[0] // 3, :, 0]
    return rgb


def test_saturation_equals_rgb2hsv_for_every_max_min_pair() -> None:
    rgb = _every_max_min_pair()
    hsv = color.rgb2hsv(rgb)
    colours = hsv_channels.Colours(rgb)
    np.testing.assert_array_equal(colours.saturation, hsv[..., 1])
    np.testing.assert_array_equal(colours.saturation8, (np.clip(hsv[..., 1], 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(colours.value, hsv[..., 2])


def test_hue_value_and_median_equal_rgb2hsv() -> None:
    rgb = _random_with_ties((120, 160))
    hsv = color.rgb2hsv(rgb)
    colours = hsv_channels.Colours(rgb)
    hue = hsv[..., 0] * 360.0
    np.testing.assert_array_equal(colours.hue, np.where(hue > 180.0, hue - 360.0, hue))
    where = colours.saturation > 0.3
    np.testing.assert_array_equal(colours.hue_where(where), colours.hue[where])
    for threshold in (0.1, 0.12, 0.3, 0.5):
        np.testing.assert_array_equal(colours.value_above(threshold), hsv[..., 2] > threshold)
        np.testing.assert_array_equal(colours.value_below(threshold), hsv[..., 2] < threshold)
    for image in (rgb, rgb[:-1]):  # even and odd pixel counts
        assert hsv_channels.Colours(image).median_value() == float(np.median(color.rgb2hsv(image)[..., 2]))


def test_pen_cores_from_colours_equal_those_from_rgb2hsv() -> None:
    """The hue is computed only where it can decide a core; the cores do not change."""
    rgb = np.concatenate([_random_with_ties((90, 160), seed=1), _every_max_min_pair()[:, :160].repeat(3, 0)])
    config = TissueConfig(min_pen_um2=1.0)  # every core starts a stroke: the full path runs
    colours = hsv_channels.Colours(rgb)
    for family, cores in tissue._ink_cores(colours, black_value=0.12).items():
        np.testing.assert_array_equal(
            cores, tissue._ink_cores(hsv_channels.HsvArray(color.rgb2hsv(rgb)), black_value=0.12)[family]
        )
    np.testing.assert_array_equal(
        tissue.detect_pen(colours, mpp=8.0, config=config),
        tissue.detect_pen(color.rgb2hsv(rgb), mpp=8.0, config=config),
    )


@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_equals_skimage(size: int) -> None:
    image = _random_with_ties((60, 70))[..., 0]
    expected = filters.median(image, footprint=np.ones((size, size), dtype=bool), mode="nearest")
    np.testing.assert_array_equal(mask_ops.median_uint8(image, size), expected)


@pytest.mark.parametrize("radius", [1, 3, 6, 12, 20])
def test_closing_and_small_objects_equal_skimage(radius: int) -> None:
    rng = np.random.default_rng(radius)
    mask = rng.random((150, 170)) > 0.85
    mask[:60, :50] = True  # an object on the edge: the reflected border counts
    footprint = morphology.disk(radius, decomposition="sequence")
    np.testing.assert_array_equal(mask_ops.closing_disk(mask, radius), morphology.closing(mask, footprint))
    np.testing.assert_array_equal(
        mask_ops.remove_small_objects(mask, radius), morphology.remove_small_objects(mask, max_size=radius)
    )


def test_otsu_equals_skimage() -> None:
    rng = np.random.default_rng(3)
    images = [
        _random_with_ties((50, 60))[..., 1],
        np.array([[3, 200]], dtype=np.uint8),
        np.clip(rng.normal(40, 9, (80, 90)), 0, 255).astype(np.uint8) + (rng.random((80, 90)) > 0.7) * 60,
    ]
    for image in images:
        assert mask_ops.otsu_uint8(image.astype(np.uint8)) == float(filters.threshold_otsu(image.astype(np.uint8)))


def test_otsu_equals_skimage_on_a_large_image() -> None:
    """Millions of pixels: skimage sums float32 counts, which rounds; so does ours."""
    rng = np.random.default_rng(4)
    image = np.clip(rng.normal(60, 25, (2500, 2000)), 0, 255).astype(np.uint8)
    assert mask_ops.otsu_uint8(image) == float(filters.threshold_otsu(image))


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (300, 257), (4097, 4097)])
def test_histogram_counts_every_value_exactly(shape: tuple[int, int]) -> None:
    """OpenCV's float32 histogram below 2**24 pixels, numpy's counts from there on."""
    image = np.random.default_rng(5).integers(0, 7, shape, dtype=np.uint8) * 40
    counts = mask_ops.histogram_uint8(image)
    np.testing.assert_array_equal(counts, np.bincount(image.ravel(), minlength=256))
    assert counts.dtype == np.int64


def test_small_objects_and_holes_with_edges_kept() -> None:
    """Areas that reach the border stay whatever their size; inner ones go by size."""
    mask = np.zeros((40, 50), dtype=bool)
    mask[0:3, 10:13] = True  # small, on the border: kept
    mask[10:13, 10:13] = True  # small, inside: removed
    mask[20:35, 20:45] = True  # large, inside: kept
    mask[25:27, 30:32] = False  # small hole: filled
    cleaned = mask_ops.remove_small_objects(mask, 20, keep_edges=True)
    expected = mask.copy()
    expected[10:13, 10:13] = False
    np.testing.assert_array_equal(cleaned, expected)
    expected[25:27, 30:32] = True
    np.testing.assert_array_equal(mask_ops.fill_small_holes(cleaned, 10), expected)
    only_edges = np.zeros((10, 10), dtype=bool)
    only_edges[:, :3] = True  # one object and one background area, both on the border: nothing to do
    np.testing.assert_array_equal(mask_ops.remove_small_objects(only_edges, 1000, keep_edges=True), only_edges)
    np.testing.assert_array_equal(mask_ops.fill_small_holes(only_edges, 1000), only_edges)
