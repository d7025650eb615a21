"""CAM on one object planted in homogeneous real tissue: how often the peak lands on it, per context.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cam_planted.py            # about 1-2 CPU minutes
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cam_planted.py --contexts 0 0.25 0.5

The set-up of ``tests/test_cam_planted_object.py`` (real pale H&E field from the shipped
tiles, a 56-px crop of real Kather 2016 lymphocytes at 16 places in a 256-px patch, the
ImageNet EfficientNet-Lite0, a head trained on patches with and without the object), read
with ``context`` x the patch side of field around each patch as the heatmap stage does.
Prints per context and method: peaks within one feature cell of the object, the median and
smallest ratio of the CAM's mean on the object to its mean away from it, and the peaks that
lie 16-63 px from the patch edge (the ring band of bench_cam_ring.py; 9 of the 16 objects
reach into it).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=float, nargs="+", default=[0.0, 0.25])
    args = parser.parse_args(argv)
    import torch

    from tests import test_cam_planted_object as planted
    from wsi_mil.datasets import embedded_data_dir, repository_test_data_dir

    torch.set_num_threads(1)
    view = ROOT / "bench" / ".cache" / "planted-data"  # the layout of the tests' shared_data fixture
    view.mkdir(parents=True, exist_ok=True)
    for name, source in (("tiles", repository_test_data_dir()), ("kather2016-samples", embedded_data_dir())):
        if not (view / name).exists():
            (view / name).symlink_to(source / name)
    print(
        "| context | peaks on the object | object / elsewhere (median, min) | peaks 16-63 px from edge | CPU s / wall s |"
    )
    print("|---|---:|---|---:|---:|")
    for context in args.contexts:
        cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
        cams, stride = planted.planted_object_cams(view, context)
        missed = planted.misses(cams, stride)
        size = cams.shape[-1]
        scale = size / planted.PATCH
        yy, xx = np.mgrid[:size, :size]
        ratios, band = [], 0
        for (ox, oy), cam in zip(planted.PLACES, cams, strict=False):
            box = (
                (xx >= ox * scale)
                & (xx < (ox + planted.OBJECT) * scale)
                & (yy >= oy * scale)
                & (yy < (oy + planted.OBJECT) * scale)
            )
            near = (xx >= ox * scale - stride) & (xx < (ox + planted.OBJECT) * scale + stride)
            near &= (yy >= oy * scale - stride) & (yy < (oy + planted.OBJECT) * scale + stride)
            ratios.append(cam[box].mean() / max(cam[~near].mean(), 1e-12))
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            band += 16 <= min(y, x, size - 1 - y, size - 1 - x) <= 63
        on = len(planted.PLACES) - sum("peak" in why for _, why in missed)
        print(
            f"| {context} | {on} / {len(planted.PLACES)} | {np.median(ratios):.1f}, {min(ratios):.1f} | {band} / {len(planted.PLACES)} "
            f"| {resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu:.0f} / {time.perf_counter() - wall:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
