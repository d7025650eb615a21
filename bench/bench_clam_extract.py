"""ResNet-50-trunc feature extraction CPU on the same 256 patches, side by side with CLAM's own loop.

Run from the repository root (nice; see bench/clam_common.py for the CLAM venv)::

    nice -n 5 .venv/bin/python bench/bench_clam_extract.py --clam-python /tmp/clam-venv/bin/python

Patches: 256 level-0 patches of 256 px of the 20000x15000 slide of bench_clam_tiling.py (0.5 um/px),
written once as a CLAM coords file (``coords``, attrs ``patch_level`` 0, ``patch_size`` 256). Both
sides read that same file and slide, resize to 224, run ResNet-50 truncated after layer3 with
average pooling (1024-d), random weights (``pretrained=False``: model hubs are unreachable here;
the time is the same), batch 256, one torch thread, and write an HDF5 feature file.

- ours: ``wsi_mil.features.extract_slide.extract_bag`` on the coords file (its CLAM/TRIDENT path), CPU
  defaults (one reading thread, TorchScript-frozen encoder). The first call in the process
  includes the freeze; the second is the steady state, reported as the headline.
- CLAM: its ``extract_features_fp.compute_w_loader`` over its ``Whole_Slide_Bag_FP`` dataset and
  a ``DataLoader(batch_size=256)`` (its CPU settings), with its ``get_encoder('resnet50_trunc')``
  (built before timing, as the script does once per run).
- bare forward: our frozen encoder on a random (256, 3, 224, 224) batch, in our process: the
  end-to-end rate (patches per CPU second and per wall second) over this rate.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clam_common import ROOT, Clock, add_clam_to_path, bench_parser, emit, load_note, require_clam, run_worker

N_PATCHES, BATCH = 256, 256
TARGET_RATE = 0.95


def prepare(work: Path) -> tuple[Path, Path]:
    """(CLAM coords file, slide) for the first 256 tissue patches of the 20000x15000 slide."""
    import dataclasses

    import h5py
    from bench_clam_tiling import slide_for

    from wsi_mil.config import Config
    from wsi_mil.io.discover import SlideSource
    from wsi_mil.store.bags import read_bag
    from wsi_mil.tiling.tile import tile_slide

    slide = slide_for(20000, 15000)
    config = Config()
    config = dataclasses.replace(config, tiling=dataclasses.replace(config.tiling, qc=False))
    tile_slide(SlideSource(slide, "slide"), work / "tiled", config=config, overwrite=True)
    coords = read_bag(work / "tiled" / "bags" / "slide.h5").coords[:N_PATCHES]
    assert len(coords) == N_PATCHES, len(coords)
    (work / "patches").mkdir(parents=True, exist_ok=True)
    (work / "slides").mkdir(exist_ok=True)
    link = work / "slides" / "slide.svs"
    if not link.exists():
        link.symlink_to(slide)
    path = work / "patches" / "slide.h5"
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("coords", data=coords)
        dataset.attrs["patch_level"], dataset.attrs["patch_size"] = 0, 256
    return path, link


def worker_ours(coords: Path, slide: Path, out: Path) -> dict[str, Any]:
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from wsi_mil.config import Config
    from wsi_mil.features import encoder_cache, extract_slide
    from wsi_mil.features.jobs import ExtractionJob

    config = Config()
    options = dataclasses.replace(
        config.extract, encoder="resnet50_trunc", weights="random", batch_size=BATCH, threads=1
    )
    config = dataclasses.replace(config, extract=options)
    runs = []
    clock = Clock()
    for index in range(2):
        job = ExtractionJob("slide", "-", coords, out / f"run{index}.h5", foreign=True, slide_path=slide)
        record = extract_slide.extract_bag(job, config=config)
        assert record["n_patches"] == N_PATCHES, record
        runs.append(clock.lap())
    model = next(v for k, v in encoder_cache._ENCODER_CACHE.items() if k[0] == "frozen")
    batch = torch.randn(BATCH, 3, 224, 224)
    with torch.inference_mode():
        model(batch[:8])  # warm
        clock.lap()
        model(batch)
        forward = clock.lap()
    return {"first": runs[0], "steady": runs[1], "forward": forward}


def worker_clam(coords: Path, slide: Path, out: Path) -> dict[str, Any]:
    import openslide
    import timm
    import torch

    torch.set_num_threads(1)
    add_clam_to_path()
    create_model = timm.create_model
    timm.create_model = lambda *args, **kwargs: create_model(*args, **{**kwargs, "pretrained": False})
    sys.argv = ["extract_features_fp.py", "--csv_path", "unused", "--batch_size", str(BATCH)]  # parsed on import
    with contextlib.redirect_stdout(io.StringIO()):
        import extract_features_fp  # CLAM's
        from dataset_modules.dataset_h5 import Whole_Slide_Bag_FP
        from models import get_encoder
        from torch.utils.data import DataLoader

        clock = Clock()
        model, transforms = get_encoder("resnet50_trunc", target_img_size=224)
        model.eval()
        build = clock.lap()
        wsi = openslide.open_slide(str(slide))
        dataset = Whole_Slide_Bag_FP(file_path=str(coords), wsi=wsi, img_transforms=transforms)
        loader = DataLoader(dataset=dataset, batch_size=BATCH)  # its CPU settings: no worker processes
        extract_features_fp.compute_w_loader(str(out / "clam.h5"), loader=loader, model=model, verbose=0)
        steady = clock.lap()
    return {"build": build, "steady": steady}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "--coords", "--slide")
    args = parser.parse_args(argv)
    if args.worker:
        work = {"ours": worker_ours, "clam": worker_clam}[args.worker]
        emit(work(args.coords, args.slide, args.out))
        return 0

    python = require_clam(args.clam_python, ["extract_features_fp.py", "models/timm_wrapper.py"])
    print(f"ResNet-50-trunc extraction of {N_PATCHES} patches, batch {BATCH}, 1 thread; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="clam-extract-") as tmp:
        coords, slide = prepare(Path(tmp))
        result = {}
        for side, interpreter in (("ours", sys.executable), ("clam", python)):
            out = Path(tmp) / side
            out.mkdir()
            common = ["--worker", side, "--coords", str(coords), "--slide", str(slide), "--out", str(out)]
            result[side] = run_worker(
                interpreter, Path(__file__), common, pythonpath=str(ROOT) if side == "ours" else ""
            )
            print(f"  {side} done ({load_note()})", flush=True)
    ours, clam = result["ours"], result["clam"]
    print(
        f"  wsi-mil extract_bag: CPU {ours['steady']['cpu_s']:.1f} s, wall {ours['steady']['wall_s']:.1f} s "
        f"(first call, with the TorchScript freeze: CPU {ours['first']['cpu_s']:.1f} s, wall {ours['first']['wall_s']:.1f} s)"
    )
    print(
        f"  CLAM compute_w_loader: CPU {clam['steady']['cpu_s']:.1f} s, wall {clam['steady']['wall_s']:.1f} s "
        f"(model build before it: CPU {clam['build']['cpu_s']:.1f} s)"
    )
    ratio = ours["steady"]["cpu_s"] / clam["steady"]["cpu_s"]
    print(f"  ours / CLAM CPU: {ratio:.2f} (target <= 1: {'MET' if ratio <= 1 else 'NOT MET'})")
    forward = ours["forward"]
    for key, label in (("cpu_s", "CPU"), ("wall_s", "wall")):
        rate = forward[key] / ours["steady"][key]
        print(
            f"  end-to-end / bare forward rate ({label}): {rate:.2f} (forward {N_PATCHES / forward[key]:.1f} patches/s, "
            f"end to end {N_PATCHES / ours['steady'][key]:.1f}; target >= {TARGET_RATE}: "
            f"{'MET' if rate >= TARGET_RATE else 'NOT MET'})"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
