"""Binary-mask and uint8-image operations of tissue detection, with scikit-image's results.

Each function returns what the scikit-image call named in its docstring returns, bit for
bit (tests/test_tissue_colours.py), computed with OpenCV (several times faster on a
thumbnail) and without importing scikit-image's filters.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on the calling thread only, for the duration. Tiling runs one slide per worker
    process; OpenCV's own pool on top of that costs CPU for nothing (30% of a 20,000 px
    slide's tiling CPU on 2 cores, to save wall time only when one slide runs alone)."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def median_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Median over a ``size`` x ``size`` window (odd), edges repeated; uint8 in and out.

    Same output as ``skimage.filters.median(image, footprint=np.ones((size, size)))``
    (scipy's 'nearest' mode); OpenCV's constant-time uint8 median, edges replicated.
    """
    import cv2

    return cv2.medianBlur(np.ascontiguousarray(image), size)


def otsu_uint8(image: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu`` of a uint8 image that holds two values or more, with
    its arithmetic on the same histogram (one bin per value from min to max), without
    importing scikit-image's filters."""
    return otsu_counts(histogram_uint8(image))


def histogram_uint8(image: np.ndarray) -> np.ndarray:
    """(256,) int64 counts of each value of a uint8 image (OpenCV's histogram: numpy's
    ``bincount`` first converts every pixel to a 64-bit index)."""
    import cv2

    if image.size >= 2**24:  # a count could pass float32's exact integers
        return np.bincount(image.ravel(), minlength=256)
    if image.size == 0:
        return np.zeros(256, dtype=np.int64)
    counts = cv2.calcHist([np.ascontiguousarray(image)], [0], None, [256], [0, 256])
    return np.rint(counts.ravel()).astype(np.int64)  # float32 counts: exact below 2**24 per value


def otsu_counts(counts: np.ndarray) -> float:
    """:func:`otsu_uint8` from the image's 256-bin histogram; the lowest value present when only one is."""
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return float(present[0]) if len(present) else 0.0
    counts = counts[present[0] : present[-1] + 1].astype(np.float32)  # skimage sums float32 counts
    centers = np.arange(present[0], present[-1] + 1)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[np.argmax(variance12)])


def label_components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected True areas of ``mask`` (4- or 8-connected): (H, W) int32 labels (0 elsewhere)
    and the pixel count of every label (label 0 first). OpenCV's labelling without its
    per-label statistics, three to four times quicker than with them."""
    count, labels = _labels(mask, connectivity)
    return labels, np.bincount(labels.ravel(), minlength=count)


def _labels(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray]:
    """(number of labels, background included; (H, W) int32 labels) of ``mask``'s True areas."""
    import cv2

    return cv2.connectedComponents(np.ascontiguousarray(mask).view(np.uint8), connectivity=connectivity)


def edge_labels(labels: np.ndarray) -> np.ndarray:
    """The labels on an image's outer rows and columns."""
    return np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])


def joined_components(mask: np.ndarray, seeds: np.ndarray, *, keep_edges: bool = False) -> np.ndarray:
    """The 8-connected areas of ``mask`` that hold a ``seeds`` pixel (hysteresis), and with
    ``keep_edges`` also those that reach the image's border (they may be joined beyond it)."""
    count, labels = _labels(mask, 8)
    keep = np.zeros(count, dtype=bool)
    keep[labels[seeds]] = True
    if keep_edges:
        keep[edge_labels(labels)] = True
    keep[0] = False
    return keep[labels]


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask resized to ``shape`` (h, w), nearest neighbour (OpenCV)."""
    import cv2

    image = np.ascontiguousarray(mask).view(np.uint8)
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).view(bool)


def remove_small_objects(mask: np.ndarray, max_size: int, *, keep_edges: bool = False) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=max_size)``: 4-connected areas
    of at most ``max_size`` px removed (OpenCV's labelling, several times faster).
    ``keep_edges``: areas that reach the image's border are kept (they may go on beyond it)."""
    count, labels = _labels(mask, 4)
    small = _small_areas(labels, count, max_size, keep_edges=keep_edges)
    return mask.copy() if small is None else mask & ~small[labels]


def _small_areas(labels: np.ndarray, count: int, max_size: int, *, keep_edges: bool) -> np.ndarray | None:
    """Per label, whether it is an area of at most ``max_size`` px (with ``keep_edges``, one that
    does not reach the image's border); None when no label is. The areas are counted only when
    some label can qualify: in a refinement window every area often reaches the border."""
    candidate = np.ones(count, dtype=bool)
    candidate[0] = False
    if keep_edges:
        candidate[edge_labels(labels)] = False
    if not candidate.any():
        return None
    small = candidate & (np.bincount(labels.ravel(), minlength=count) <= max_size)
    return small if small.any() else None


@functools.cache
def _disk_steps(radius: int) -> tuple[tuple[np.ndarray, int], ...]:
    from skimage import morphology

    return tuple(morphology.disk(radius, decomposition="sequence"))


def closing_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.closing(mask, disk(radius, decomposition="sequence"))``: the same
    footprint sequence and 'reflect' edges, with OpenCV's dilation and erosion. Larger disks
    decompose into T-shaped steps: skimage's erosion takes them mirrored, its dilation not,
    and every step reflects the edge again."""
    import cv2

    steps = _disk_steps(radius)
    image: np.ndarray = np.ascontiguousarray(mask).view(np.uint8)
    for operation, mirror in ((cv2.dilate, False), (cv2.erode, True)):
        for footprint, count in steps:
            kernel = np.ascontiguousarray(footprint[::-1, ::-1] if mirror else footprint, dtype=np.uint8)
            for _ in range(int(count)):
                image = operation(image, kernel, borderType=cv2.BORDER_REFLECT)
    return image.view(bool)


def fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill background components of at most ``max_pixels`` that do not touch the border."""
    count, labels = _labels(~mask, 4)
    small = _small_areas(labels, count, max_pixels, keep_edges=True)
    return mask.copy() if small is None else mask | small[labels]
