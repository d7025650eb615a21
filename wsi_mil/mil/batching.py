"""Mini-batches of bags: padding, masks, and batch plans that bound memory.

Bags differ in length, so a batch pads them to its longest bag and carries a mask
(True for a bag's own instances). The heads compute every softmax, mean and instance
choice over the mask only, so a bag's outputs do not depend on its batch mates. A batch
holds at most ``batch_bags`` bags and at most :data:`MAX_BATCH_ROWS` padded instances
(a long bag goes alone), so memory stays bounded whatever the bag sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Padded instances (bags x longest bag) one batch may hold; a bag longer than this is a batch of its own.
MAX_BATCH_ROWS = 65536


@dataclass
class BagBatch:
    slide_ids: list[str]
    features: torch.Tensor  #: (B, N, D) float32, zeros on padding
    coords: torch.Tensor  #: (B, N, 2) int64
    mask: torch.Tensor | None  #: (B, N) bool; None when no bag is padded

    def to(self, device: torch.device) -> BagBatch:
        mask = None if self.mask is None else self.mask.to(device)
        return BagBatch(self.slide_ids, self.features.to(device, non_blocking=True), self.coords.to(device), mask)


def pad_bags(slide_ids: Sequence[str], bags: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> BagBatch:
    """Bags of features (N_b, D) and coords (N_b, 2) -> one padded :class:`BagBatch`."""
    sizes = [len(features) for features, _ in bags]
    longest = max(sizes)
    if all(n == longest for n in sizes):
        return BagBatch(list(slide_ids), torch.stack([f for f, _ in bags]), torch.stack([c for _, c in bags]), None)
    dim = bags[0][0].shape[1]
    features = torch.zeros(len(bags), longest, dim, dtype=bags[0][0].dtype)
    coords = torch.zeros(len(bags), longest, 2, dtype=torch.int64)
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    for b, (f, c) in enumerate(bags):
        features[b, : len(f)], coords[b, : len(c)], mask[b, : len(f)] = f, c, True
    return BagBatch(list(slide_ids), features, coords, mask)


def plan_batches(
    slide_ids: Sequence[str], sizes: Sequence[int], batch_bags: int, max_rows: int = MAX_BATCH_ROWS
) -> list[list[str]]:
    """Consecutive groups of ``slide_ids`` (order kept) of at most ``batch_bags`` bags and
    at most ``max_rows`` padded instances each."""
    batches: list[list[str]] = []
    current: list[str] = []
    longest = 0
    for slide_id, n in zip(slide_ids, sizes, strict=True):
        if current and (len(current) >= batch_bags or max(longest, n) * (len(current) + 1) > max_rows):
            batches.append(current)
            current, longest = [], 0
        current.append(slide_id)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
