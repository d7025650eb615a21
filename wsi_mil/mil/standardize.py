"""Per-channel feature standardization fitted on a fold's training instances.

Frozen-backbone features come on any scale (ImageNet CNN activations are mostly in
[0, 10]; tabular MIL features can span -471..625). Fed unscaled, the first linear
layer starts far from its initialization's assumptions: first-epoch losses of 9-10 and
out-of-fold probabilities of exactly 0 or 1. So each fold fits a per-channel mean and
standard deviation on its training bags only (every instance counts once) and the head
standardizes its input with them. The statistics are buffers of the head, saved in
``model.safetensors``: ``predict``, heatmaps and CAM explanations apply exactly what
training used, with nothing to pass around.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

#: A channel whose standard deviation is below this is treated as constant: centred, not scaled.
MIN_STD = 1e-6


class InputStandardizer(nn.Module):
    """x -> (x - mean) / std per channel; the identity until :meth:`set_statistics`."""

    # Buffers registered in __init__; declared so the type checker knows them as tensors.
    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))
        self.bypass = False  #: inputs arrive standardized (see :func:`inputs_standardized`); not saved

    def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """mean, std (D,); a channel with std < MIN_STD keeps the scale 1 (no division by zero)."""
        std = np.asarray(std, np.float64)
        inv = np.where(std >= MIN_STD, 1.0 / np.maximum(std, MIN_STD), 1.0)
        self.mean.copy_(torch.as_tensor(np.asarray(mean, np.float64), dtype=torch.float32))
        self.inv_std.copy_(torch.as_tensor(inv, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return x
        # x * inv_std - mean * inv_std in one pass: one new (B, N, D) tensor instead of two
        return torch.addcmul(-self.mean * self.inv_std, x, self.inv_std)


def fit_statistics(bags: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel mean and population std over every instance of ``bags`` ((N, D) each),
    accumulated in float64 one bag at a time (bags may be streamed from disk); and the
    number of instances."""
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count = 0
    for features in bags:
        x = features.to(torch.float64)
        if total is None or squares is None:
            total, squares = x.sum(dim=0), (x * x).sum(dim=0)
        else:
            total += x.sum(dim=0)
            squares += (x * x).sum(dim=0)
        count += x.shape[0]
    if total is None or squares is None or count == 0:
        raise ValueError("no training instances to fit the feature standardization on")
    mean = (total / count).numpy()
    variance = np.maximum((squares / count).numpy() - mean * mean, 0.0)
    return mean, np.sqrt(variance), count


@contextmanager
def inputs_standardized(model: nn.Module) -> Iterator[None]:
    """Within this block ``model``'s :class:`InputStandardizer` passes its input through:
    the caller feeds bags it standardized itself (e.g. once per fold, not once per step)."""
    standardizer = getattr(model, "standardize", None)
    if standardizer is None:
        yield
        return
    standardizer.bypass = True
    try:
        yield
    finally:
        standardizer.bypass = False
