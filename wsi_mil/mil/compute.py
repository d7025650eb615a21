"""Where and how a fold trains: torch thread counts, the training precision, the optimizer.

``train.threads: null`` picks the thread count from the bag sizes (one thread for small
steps); ``train.precision: auto`` trains in bfloat16 only where the device computes it
natively. :func:`torch_threads` sets the count on purpose for a run and restores it after.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import TrainConfig
from wsi_mil.mil.data import BagStore

#: ``threads: null``: one thread while a step's work is below this many feature values
#: (instances x dim per bag x bags per batch); tiny steps gain nothing from more threads
#: and lose much on a busy machine (BENCHMARKS.md).
SMALL_STEP_VALUES = 2**21


def training_threads(config: TrainConfig, store: BagStore) -> int:
    """``train.threads``, or for null: 1 for small steps, else the usable cores (at most 8)."""
    if config.threads is not None:
        return config.threads
    sizes = [store.sizes[s] for s in store.slide_ids]
    rows = float(np.mean(sizes)) if sizes else 0.0
    if config.max_instances is not None:
        rows = min(rows, config.max_instances)
    if rows * store.dim * config.batch_bags < SMALL_STEP_VALUES:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def native_bfloat16(device: Any) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively (CUDA with bf16; a CPU with AVX-512 BF16 or AMX)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_has_bfloat16()


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """From /proc/cpuinfo, read once per process (every fold asks)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def training_precision(config: TrainConfig, device: Any) -> str:
    """``train.precision`` resolved for ``device``: float32 or bfloat16."""
    if config.precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return config.precision


def make_optimizer(parameters: Iterable[Any], config: TrainConfig) -> Any:
    """``train.optimizer``: AdamW (weight decay decoupled from the gradient) or Adam (weight
    decay added to the gradient as an L2 term, as in many reference implementations)."""
    import torch

    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: Any, config: TrainConfig) -> Any:
    """``train.scheduler``: cosine to 1% of lr over the epochs, halving on a plateau, or None."""
    import torch

    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr * 0.01)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(1, config.patience // 2))
    return None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch's intra-op work on ``count`` threads, restoring the previous count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
