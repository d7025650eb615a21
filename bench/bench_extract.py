"""Feature-extraction benchmark: reading rate vs raw decode, compute hidden behind reading,
and the frozen encoder vs plain eager. Prints numbers; it is not a test.

    .venv/bin/python bench/bench_extract.py --encoder efficientnet_lite0 --device cpu

On a synthetic Aperio-like slide (JPEG tiles 256 px, 0.5 um/px, patches of 256 px at
0.5 um/px so the grid lines up with the tiles) it measures:

1. raw tile decode rate: the slide's compressed tiles, already in memory, decoded
   with tifffile/imagecodecs on one core (the physical limit of reading);
2. the project's reading rate alone: the extraction loader over the bag, no model, with
   the CPU default (one reading thread) and its ratio to (1); then, for comparison, two
   reading threads and one DataLoader worker process (the CUDA default's kind);
3. backbone-only throughput on random tensors (frozen encoder, same batch size) and
   end-to-end ``extract_bag`` throughput on the slide; and their ratio;
4. the frozen (TorchScript freeze on CPU) encoder's speed-up over plain eager.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "extract"


def _slide(width: int, height: int) -> Path:
    from wsi_mil.synthetic import Region, write_synthetic_slide

    path = CACHE / f"extract_{width}x{height}.svs"
    if not path.exists():
        write_synthetic_slide(
            path, width=width, height=height, mpp=0.5, regions=[Region(0, 0, width, height)], downsamples=(1, 4, 16)
        )
    return path


def _tile(slide: Path, run_dir: Path) -> Path:
    from wsi_mil.config import Config, ParallelConfig
    from wsi_mil.io.discover import SlideSource
    from wsi_mil.tiling import tile_slides

    bag = run_dir / "bags" / f"{slide.stem}.h5"
    if not bag.exists():
        tile_slides(
            [SlideSource(slide, slide.stem)], run_dir, config=Config(parallel=ParallelConfig(workers=0)), progress=False
        )
    return bag


def raw_decode_rate(slide: Path, count: int) -> float:
    """Patches/s decoding level-0 tiles already in memory, one core (256-px tile = one patch)."""
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        page = tif.series[0].levels[0].pages[0]
        handle = tif.filehandle
        blobs = []
        for index in range(min(count, len(page.dataoffsets))):
            handle.seek(page.dataoffsets[index])
            blobs.append((index, handle.read(page.databytecounts[index])))
        started = time.perf_counter()
        for index, data in blobs:
            page.decode(data, index, jpegtables=page.jpegtables)
        return len(blobs) / (time.perf_counter() - started)


def reading_rate(bag_path: Path, batch_size: int, loader: str, workers: int) -> tuple[float, str]:
    """Patches/s through the extraction loader alone (no model); the loader's start-up included."""
    from wsi_mil.features.loaders import make_loader, ring_size
    from wsi_mil.features.reading import PatchDataset, make_source
    from wsi_mil.io import open_slide
    from wsi_mil.store import read_bag

    bag = read_bag(bag_path)
    with open_slide(bag.attrs["slide_path"]) as slide:
        source = make_source(bag, slide)
    dataset = PatchDataset(source, blank_size=source.size, ring_size=ring_size())
    started = time.perf_counter()
    n = sum(len(index) for _, _, index in make_loader(dataset, kind=loader, batch_size=batch_size, workers=workers))
    rate = n / (time.perf_counter() - started)
    source.close()
    return rate, source.kind


def frozen_models(encoder, batch_size: int) -> tuple[Any, dict[str, Callable[[Any], Any]]]:
    """A random input batch (already resized and normalized) and the eager and frozen models."""
    import torch

    from wsi_mil.features.freeze import optimize_for_inference

    images = torch.randint(0, 256, (batch_size, 256, 256, 3), dtype=torch.uint8)
    x = encoder.transform(images)
    models = {
        mode: optimize_for_inference(encoder.model, x, device=torch.device("cpu"), mode=mode)
        for mode in ("eager", "jit")
    }
    with torch.inference_mode():
        for model in models.values():
            model(x)
    return x, models


def backbone_rate(model: Callable[[Any], Any], x: Any, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return repeats * len(x) / (time.perf_counter() - started)


def end_to_end_rate(bag_path: Path, run_dir: Path, encoder_name: str, batch_size: int) -> Callable[[], tuple]:
    """A function that times one ``extract_bag`` of the whole bag (after one warm-up call)."""
    from wsi_mil.config import Config, ExtractConfig, ParallelConfig
    from wsi_mil.features.extract_slide import extract_bag
    from wsi_mil.features.jobs import ExtractionJob

    config = Config(
        extract=ExtractConfig(encoder=encoder_name, device="cpu", batch_size=batch_size),
        parallel=ParallelConfig(workers=0),
    )
    job = ExtractionJob(bag_path.stem, "-", bag_path, run_dir / "features" / f"{bag_path.stem}.h5")
    extract_bag(job, config=config)  # warm: encoder built and frozen once per process, as in a run

    def timed() -> tuple[float, dict]:
        started = time.perf_counter()
        record = extract_bag(job, config=config)
        return record["n_patches"] / (time.perf_counter() - started), record

    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu", choices=("cpu",), help="this script measures the CPU path")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(8192, 4096), metavar=("W", "H"))
    parser.add_argument("--repeats", type=int, default=6, help="batches per backbone timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of eager, frozen, end to end")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    from wsi_mil.features.registry import create_encoder

    slide = _slide(*args.size)
    run_dir = CACHE / f"run_{slide.stem}"
    bag = _tile(slide, run_dir)
    cores = len(os.sched_getaffinity(0))
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} compute threads"
    )
    print(
        f"slide: {slide.name} ({args.size[0]}x{args.size[1]}, JPEG tiles 256 px), encoder {args.encoder}, "
        f"batch {args.batch_size}\n"
    )

    # Raw decode and reading alternate over rounds (each takes about a second); medians.
    raws, reads = [], []
    for _ in range(args.rounds):
        raws.append(raw_decode_rate(slide, 10_000))
        rate, kind = reading_rate(bag, args.batch_size, "threads", 1)
        reads.append(rate)
    raw, read = statistics.median(raws), statistics.median(reads)
    print(
        f"(1) raw tile decode, 1 core      {raw:9.1f} patches/s   (median of {args.rounds} rounds, "
        f"{min(raws):.0f}-{max(raws):.0f})"
    )
    print(f"(2) project reading alone ({kind}), CPU default loader (1 thread)")
    print(
        f"                                  {read:9.1f} patches/s   ratio to (1): {read / raw:.2f}  (target >= 0.80)"
        f"   ({min(reads):.0f}-{max(reads):.0f})"
    )
    for loader, workers in (("threads", 2), ("processes", 1)):
        rate, _ = reading_rate(bag, args.batch_size, loader, workers)
        print(f"    {loader}, {workers} worker(s){'':12}{rate:9.1f} patches/s   ratio to (1): {rate / raw:.2f}")

    encoder = create_encoder(args.encoder, weights="imagenet" if args.encoder == "efficientnet_lite0" else "random")
    x, models = frozen_models(encoder, args.batch_size)
    e2e_once = end_to_end_rate(bag, run_dir, args.encoder, args.batch_size)
    # Rounds alternate eager, frozen and end to end, so that the machine's drift over
    # minutes touches all three alike; medians over rounds are reported.
    rates: dict[str, list[float]] = {"eager": [], "jit": [], "e2e": []}
    for _ in range(args.rounds):
        for mode, model in models.items():
            rates[mode].append(backbone_rate(model, x, args.repeats))
        rate, record = e2e_once()
        rates["e2e"].append(rate)
    eager, frozen, e2e = (statistics.median(rates[key]) for key in ("eager", "jit", "e2e"))
    spread = "  ".join(f"{key} {min(v):.1f}-{max(v):.1f}" for key, v in rates.items())
    print(f"(3) backbone only (frozen)        {frozen:9.1f} patches/s   (median of {args.rounds} rounds)")
    print(
        f"    end-to-end extraction         {e2e:9.1f} patches/s   ratio: {e2e / frozen:.2f}  (target >= 0.90)"
        f"   [{record['n_patches']} patches, source {record['patch_source']}]"
    )
    print(f"(4) eager backbone                {eager:9.1f} patches/s   frozen speed-up: {frozen / eager:.2f}x")
    print(f"    per-round range (patches/s): {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
