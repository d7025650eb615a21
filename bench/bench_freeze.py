"""Frozen vs eager encoder on CPU, interleaved batch by batch. Prints numbers; not a test.

    .venv/bin/python bench/bench_freeze.py --encoder resnet50_trunc --rounds 5

Each round times one batch of random patches through the eager model and then through
the TorchScript-frozen one (what ``optimize_for_inference(mode="auto")`` gives on CPU),
so that the machine's drift touches both alike; prints max / median / min patches/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import frozen_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    from wsi_mil.features.registry import create_encoder

    weights = "imagenet" if args.encoder == "efficientnet_lite0" else "random"  # speed does not depend on weights
    x, models = frozen_models(create_encoder(args.encoder, weights=weights), args.batch_size)
    rates: dict[str, list[float]] = {mode: [] for mode in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for mode, model in models.items():
                started = time.perf_counter()
                model(x)
                rates[mode].append(len(x) / (time.perf_counter() - started))
    print(f"{args.encoder}, batch {args.batch_size}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for mode, values in rates.items():
        print(
            f"{mode:6} max {max(values):6.1f}  median {statistics.median(values):6.1f}  min {min(values):6.1f}  patches/s"
        )
    print(f"frozen speed-up (medians): {statistics.median(rates['jit']) / statistics.median(rates['eager']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
