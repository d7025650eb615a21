"""MIL training benchmark: seconds per epoch and peak memory on CPU. Prints numbers; it is not a test.

    .venv/bin/python bench/bench_train.py                       # 500 bags x 2,000 instances x 1024-d, abmil and ilam
    .venv/bin/python bench/bench_train.py --set train.precision=float32 --set train.batch_bags=1   # the old recipe's step

The bags are random float32 features held in memory, as ``BagStore`` holds them after
its one parallel read (4.1 GB at the default size), with random labels: the cost of an
epoch does not depend on what the features say. Each model trains ``--epochs`` epochs
with the default train config (mini-batches of ``batch_bags`` bags: forward, backward,
gradient clipping, AdamW; the config's thread count and precision, printed) and no
validation set, after one untimed warm-up epoch on 20 bags; then one inference pass over all bags
(what validation and ``predict`` cost). Peak RSS is the process's high-water mark
(``ru_maxrss``), printed after the data is built and after each model. "others' cores" is
the CPU other processes used during the timed epochs (from /proc/stat): numbers taken
while it is well above 0 are slowed by them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class MemoryBags:
    """The in-memory side of ``wsi_mil.mil.data.BagStore``: features (N, D) float32 and coords per slide."""

    in_memory = True

    def __init__(self, n_bags: int, n_instances: int, dim: int, seed: int = 0) -> None:
        import torch

        rng = np.random.default_rng(seed)
        side = int(np.ceil(np.sqrt(n_instances)))
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_instances] * 256
        self.dim = dim
        self.bags = {
            f"bag_{i:04d}": (
                torch.from_numpy(rng.standard_normal((n_instances, dim), dtype=np.float32)),
                torch.from_numpy(grid.astype(np.int64)),
            )
            for i in range(n_bags)
        }
        self.labels = {s: int(i % 2) for i, s in enumerate(self.bags)}
        self.slide_ids = list(self.bags)
        self.sizes = dict.fromkeys(self.bags, n_instances)

    def get(self, slide_id: str) -> tuple:
        return self.bags[slide_id]


def busy_cpu_seconds() -> float:
    """Non-idle CPU seconds of the whole machine so far (/proc/stat), to see other processes' load."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_model(
    bags: MemoryBags, model: str, epochs: int, transformer: bool, overrides: dict[str, Any]
) -> dict[str, Any]:
    import torch

    from wsi_mil.config import TrainConfig
    from wsi_mil.mil.compute import torch_threads, training_precision, training_threads

    config = replace(
        TrainConfig(model=model, epochs=1, min_epochs=0, device="cpu", transformer=transformer), **overrides
    )
    with torch_threads(training_threads(config, bags)):
        result = _bench(bags, config, epochs)
    return {
        **result,
        "threads": training_threads(config, bags),
        "precision": training_precision(config, torch.device("cpu")),
    }


def _bench(bags: MemoryBags, config: Any, epochs: int) -> dict[str, float]:
    import torch

    from wsi_mil.mil.train import FoldTrainer

    ids = list(bags.bags)
    warm = FoldTrainer(bags, bags.labels, 2, config=config, device=torch.device("cpu"), fold=0)
    warm.fit(ids[:20], [])
    trainer = FoldTrainer(
        bags, bags.labels, 2, config=replace(config, epochs=epochs), device=torch.device("cpu"), fold=0
    )
    started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    history = trainer.fit(ids, [])
    train_s = time.perf_counter() - started
    cpu_s = own_cpu_seconds() - own
    others = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / train_s
    started = time.perf_counter()
    trainer.evaluate(ids)
    infer_s = time.perf_counter() - started
    epochs_s = [h["seconds"] for h in history["history"]]
    return {
        "epoch_s": float(np.median(epochs_s)),
        "epoch_min_s": min(epochs_s),
        "train_s": train_s,
        "cpu_epoch_s": cpu_s / len(epochs_s),
        "inference_s": infer_s,
        "peak_rss_gib": peak_rss_gib(),
        "others_cores": others,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bags", type=int, default=500)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--models", nargs="+", default=["abmil", "ilam"], help="heads; ilam+transformer adds the transformer"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="train.key=value (e.g. train.threads=1, train.precision=float32, train.batch_bags=1)",
    )
    args = parser.parse_args(argv)

    import torch

    from wsi_mil.config import parse_override

    overrides = {}
    for text in args.overrides:
        _, key, value = parse_override(text)
        overrides[key] = value
    print(
        f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}; train settings {overrides or 'default'}"
    )
    started = time.perf_counter()
    bags = MemoryBags(args.bags, args.instances, args.dim)
    size = args.bags * args.instances * args.dim * 4 / 2**30
    print(
        f"data: {args.bags} bags x {args.instances} instances x {args.dim}-d float32 = {size:.2f} GiB in memory "
        f"(built in {time.perf_counter() - started:.1f} s); peak RSS {peak_rss_gib():.2f} GiB"
    )
    print(
        f"{'model':18s} {'s/epoch':>8s} {'min':>8s} {'CPU s/ep':>8s} {'bags/s':>7s} {'infer s':>8s} {'peak RSS GiB':>13s} "
        f"{'others (cores)':>14s} threads precision"
    )
    for name in args.models:
        model, _, extra = name.partition("+")
        result = bench_model(bags, model, args.epochs, transformer=extra == "transformer", overrides=overrides)
        print(
            f"{name:18s} {result['epoch_s']:8.1f} {result['epoch_min_s']:8.1f} {result['cpu_epoch_s']:8.1f} "
            f"{args.bags / result['epoch_s']:7.1f} {result['inference_s']:8.1f} {result['peak_rss_gib']:13.2f} "
            f"{result['others_cores']:14.2f} {result['threads']:7d} {result['precision']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
