"""Binary-mask and uint8-image operations of tissue detection, with scikit-image's results.

Each function returns what the scikit-image call named in its docstring returns, bit for
bit (tests/test_tissue_colours.py), computed with OpenCV (several times faster on a
thumbnail) and without importing scikit-image's filters.
"""

from __future__ import annotations

import numpy as np


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
    return otsu_counts(np.bincount(image.ravel(), minlength=256))


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
    and (count, 5) int32 stats (x, y, width, height, area) per label, OpenCV's."""
    import cv2

    image = np.ascontiguousarray(mask).view(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(image, connectivity=connectivity)
    return labels, stats


#: Up to this many labels are set by their bounding boxes; more, by one gather over the image.
_FEW = 256


def set_labels(image: np.ndarray, labels: np.ndarray, stats: np.ndarray, which: np.ndarray, value: bool) -> np.ndarray:
    """A copy of ``image`` (bool) with the pixels of the labels ``which`` set to ``value``."""
    if which.size > _FEW:
        chosen = np.zeros(len(stats), dtype=bool)
        chosen[which] = True
        return image | chosen[labels] if value else image & ~chosen[labels]
    out = image.copy()
    for label in which:  # usually a handful: only their bounding boxes are looked at
        x, y, w, h = (int(v) for v in stats[label, :4])
        box = labels[y : y + h, x : x + w] == label
        out[y : y + h, x : x + w][box] = value
    return out


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=max_size)``: 4-connected areas
    of at most ``max_size`` px removed (OpenCV's labelling, several times faster)."""
    labels, stats = label_components(mask, 4)
    small = np.flatnonzero(stats[1:, 4] <= max_size) + 1
    return set_labels(mask, labels, stats, small, False)


def closing_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.closing(mask, disk(radius, decomposition="sequence"))``: the same
    footprint sequence and 'reflect' edges, with OpenCV's dilation and erosion. Larger disks
    decompose into T-shaped steps: skimage's erosion takes them mirrored, its dilation not,
    and every step reflects the edge again."""
    import cv2
    from skimage import morphology

    steps = morphology.disk(radius, decomposition="sequence")
    image: np.ndarray = np.ascontiguousarray(mask).view(np.uint8)
    for operation, mirror in ((cv2.dilate, False), (cv2.erode, True)):
        for footprint, count in steps:
            kernel = np.ascontiguousarray(footprint[::-1, ::-1] if mirror else footprint, dtype=np.uint8)
            for _ in range(int(count)):
                image = operation(image, kernel, borderType=cv2.BORDER_REFLECT)
    return image.view(bool)


def fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill background components of at most ``max_pixels`` that do not touch the border."""
    labels, stats = label_components(~mask, 4)
    x, y, w, h, area = (stats[1:, i] for i in range(5))
    inner = (x > 0) & (y > 0) & (x + w < mask.shape[1]) & (y + h < mask.shape[0])
    return set_labels(mask, labels, stats, np.flatnonzero(inner & (area <= max_pixels)) + 1, True)
