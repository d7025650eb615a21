"""Mini-batches of bags: padding, masks, and batch plans that bound memory.

Bags differ in length, so a batch pads them to its longest bag and carries a mask
(True for a bag's own instances). The heads compute every softmax, mean and instance
choice over the mask only, so a bag's outputs do not depend on its batch mates. A batch
holds at most ``batch_bags`` bags and at most :data:`MAX_BATCH_ROWS` padded instances
(a long bag goes alone), so memory stays bounded whatever the bag sizes; a small cohort
trains in smaller batches (:func:`training_batch_bags`) so that an epoch is not only a
handful of steps.
:func:`iterate_batches` yields the padded batches of a plan, reading the next one while
the current one trains; :class:`PreparedBags` holds a fold's training bags standardized
and cast once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from wsi_mil.mil.data import BagStore

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


def training_batch_bags(batch_bags: int, n_train: int, min_steps_per_epoch: int) -> tuple[int, str]:
    """Bags per training step for a fold of ``n_train`` bags, and why: ``batch_bags``, or fewer
    (at least one) when ``batch_bags`` would give an epoch fewer than ``min_steps_per_epoch`` steps."""
    if min_steps_per_epoch <= 0 or n_train >= batch_bags * min_steps_per_epoch:
        return batch_bags, f"train.batch_bags ({batch_bags})"
    size = max(1, n_train // min_steps_per_epoch)
    steps = -(-n_train // batch_bags)
    return size, (
        f"{n_train} training bags in batches of {batch_bags} would be {steps} steps an epoch; "
        f"train.min_steps_per_epoch asks for {min_steps_per_epoch}, so batches of {size}"
    )


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


def iterate_batches(store: BagStore, batches: Sequence[Sequence[str]], transform: Any = None) -> Iterator[BagBatch]:
    """Padded batches; ``transform(features, coords)`` per bag first (e.g. subsampling).
    When streaming from disk the next batch is read while this one trains."""

    def load(slide_ids: Sequence[str]) -> BagBatch:
        bags = [store.get(s) for s in slide_ids]
        if transform is not None:
            bags = [transform(f, c) for f, c in bags]
        return pad_bags(slide_ids, bags)

    if store.in_memory or not batches:
        for batch in batches:
            yield load(batch)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, batches[0])
        for index in range(len(batches)):
            loaded = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(load, batches[index + 1])
            yield loaded


class PreparedBags:
    """A fold's training bags standardized with the head's statistics and cast to the
    training dtype once, instead of at every step (in-memory stores with bfloat16 training:
    half the store's memory again). The numbers are those the head would compute itself:
    float32 standardization, then the cast that autocast makes at the first linear layer."""

    in_memory = True

    def __init__(self, store: BagStore, slide_ids: Sequence[str], standardizer: Any, dtype: Any) -> None:
        self.sizes = store.sizes
        self._bags: dict[str, tuple[Any, Any]] = {}
        with torch.no_grad():
            for slide_id in dict.fromkeys(slide_ids):
                features, coords = store.get(slide_id)
                self._bags[slide_id] = (standardizer(features).to(dtype), coords)

    def get(self, slide_id: str) -> tuple[Any, Any]:
        return self._bags[slide_id]
