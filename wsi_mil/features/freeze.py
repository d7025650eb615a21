"""Make an encoder fast for inference, measured rather than assumed (see BENCHMARKS.md).

- always: eval mode, frozen parameters, channels_last, ``torch.inference_mode``;
- CPU, ``mode="jit"`` (the CPU default): TorchScript trace + ``torch.jit.freeze`` +
  ``optimize_for_inference``, which folds conv+BN and pre-packs weights; the frozen
  module is checked against eager output on the first patches of the example batch and
  dropped (with a warning) if tracing fails or disagrees;
- CUDA: eager under ``torch.autocast`` with the encoder's precision (float16 for CNNs,
  bfloat16 for ViTs); ``mode="compile"`` adds ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

FREEZE_MODES = ("auto", "eager", "jit", "compile")
#: TorchScript traces, checks and specialises on this many patches of the example batch:
#: the four forward passes that costs on a whole batch of 256 took ~90 CPU seconds with
#: ResNet-50 on one thread, and the frozen module runs full batches as fast either way
#: (BENCHMARKS.md).
FREEZE_EXAMPLE_PATCHES = 4


def autocast_context(device: Any, precision: str) -> contextlib.AbstractContextManager:
    import torch

    if device.type != "cuda" or precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, precision))


def optimize_for_inference(model: Any, example: Any, *, device: Any, mode: str = "auto") -> Callable[[Any], Any]:
    """Return a callable (B, 3, S, S) -> (B, D) for ``device``; ``example`` is a real input batch."""
    import torch

    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze mode must be one of {FREEZE_MODES}, got {mode!r}")
    model = model.eval().to(device, memory_format=torch.channels_last)
    if mode == "auto":
        mode = "jit" if device.type == "cpu" else "eager"
    if mode == "eager":
        return model
    if mode == "compile":
        return torch.compile(model, mode="max-autotune" if device.type == "cuda" else "default")
    example = example[:FREEZE_EXAMPLE_PATCHES].to(device)
    try:
        with torch.inference_mode():
            reference = model(example)
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.compile, but on CPU it still folds
            # conv+BN without compile's minute-long start-up (measured in BENCHMARKS.md).
            warnings.simplefilter("ignore", FutureWarning)
            frozen = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            )
        with torch.inference_mode():
            frozen(example)  # first calls specialise the graph; the check below replaces trace's own
            output = frozen(example)
        if not torch.allclose(output, reference, rtol=1e-3, atol=1e-3):
            raise RuntimeError(f"frozen output differs by {float((output - reference).abs().max()):.3g}")
    except Exception as error:  # noqa: BLE001 -- any tracing failure falls back to the eager model
        logger.warning("TorchScript freezing failed (%s: %s); running eager", type(error).__name__, error)
        return model
    return frozen
