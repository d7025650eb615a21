"""``wsi-mil view`` on a 100,000 x 80,000 slide, through its HTTP interface.

    .venv/bin/python bench/bench_viewer.py

Builds once into bench/.cache/viewer/: an Aperio-style pyramidal JPEG TIFF (tifffile;
256-px tiles, levels 1/4/16/64/256, two elliptical tissue sections over ~40 % of the
slide; tiles are a handful of pre-encoded JPEG streams, so building takes seconds, not
the hours of encoding 8 gigapixels), and a run folder whose scores file holds every
256-px patch of the tissue (~50,000) with a planted lesion. Then starts ``wsi-mil view``
in its own process, cold, and times with an HTTP client what a browser asks for:

- the slide's info (the page's first request; it computes the slide and cohort ranges);
- the first overlay tile, at the zoom that shows the whole slide, and the first at level 0;
- a pan that needs 100 new tiles at level 0: 100 overlay tiles, and the same 10 x 10 tile
  area with the slide under it (100 slide + 100 overlay tiles), over 6 connections at a
  time (Chromium's limit per host); no tile was asked for before.

Prints wall seconds and the server's and client's CPU seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "viewer"
WIDTH, HEIGHT, TILE, MPP = 100_000, 80_000, 256, 0.25
DOWNSAMPLES = (1, 4, 16, 64, 256)
CONNECTIONS = 6


def regions() -> list:
    from wsi_mil.synthetic import Region

    return [Region(8_000, 10_000, 38_000, 60_000, "ellipse"), Region(52_000, 8_000, 42_000, 64_000, "ellipse")]


def encoded_tiles() -> list[bytes]:
    """JPEG streams of 256-px tiles as tifffile writes them: glass first, then 8 textures."""
    import tifffile

    from wsi_mil.synthetic import GLASS, tissue_texture

    glass = np.empty((TILE, TILE, 3), np.uint8)
    glass[:] = GLASS
    strip = np.concatenate([glass, *[tissue_texture(TILE, seed=s) for s in range(8)]], axis=1)
    path = CACHE / "tiles.tif"
    tifffile.imwrite(
        path,
        strip,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 85},
        metadata=None,
    )
    with tifffile.TiffFile(path) as tif, path.open("rb") as handle:
        page = tif.pages[0]
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            handle.seek(offset)
            out.append(handle.read(count))
    path.unlink()
    return out


def build_slide(path: Path) -> None:
    import tifffile

    tiles = encoded_tiles()
    shapes = regions()
    description = (
        f"Aperio Image Library v12.0.0 \r\n{WIDTH}x{HEIGHT} ({TILE}x{TILE}) JPEG/RGB Q=85|AppMag = 40|MPP = {MPP:.4f}"
    )

    def level_tiles(width: int, height: int, downsample: int):
        for ty in range(0, height, TILE):
            ys = np.array([int((ty + TILE / 2) * downsample)])
            for tx in range(0, width, TILE):
                xs = np.array([int((tx + TILE / 2) * downsample)])
                inside = any(bool(r.mask(xs, ys)[0, 0]) for r in shapes)
                yield tiles[1 + ((tx // TILE) * 7 + (ty // TILE) * 13) % 8] if inside else tiles[0]

    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        for index, downsample in enumerate(DOWNSAMPLES):
            width, height = WIDTH // downsample, HEIGHT // downsample
            writer.write(
                level_tiles(width, height, downsample),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                metadata=None,
                subfiletype=0,
                description=description if index == 0 else f"Aperio Image Library v12.0.0 \r\n{width}x{height}",
            )
    tmp.rename(path)


def build_run(run: Path, slide: Path) -> int:
    from wsi_mil.store.scores import write_scores

    xs, ys = np.arange(0, WIDTH - TILE + 1, TILE), np.arange(0, HEIGHT - TILE + 1, TILE)
    inside = np.zeros((len(ys), len(xs)), bool)
    for region in regions():
        inside |= region.mask(xs + TILE // 2, ys + TILE // 2)
    rows, cols = np.nonzero(inside)
    coords = np.stack([xs[cols], ys[rows]], 1).astype(np.int64)
    rng = np.random.default_rng(0)
    lesion = np.hypot(coords[:, 0] - 30_000, coords[:, 1] - 40_000) < 8_000
    margin = np.where(lesion, 6.0, -2.0) + rng.normal(0, 0.5, len(coords))
    raw = np.where(lesion, 3.0, 0.0) + rng.normal(0, 0.5, len(coords))
    attention = np.exp(raw) / np.exp(raw).sum()
    logits = np.stack([-margin / 2, margin / 2], 1)
    maps = {
        "attention_raw": raw,
        "attention": attention,
        "attention_pct": (np.argsort(np.argsort(raw)) + 0.5) / len(raw),
        "instance_logits": logits,
        "contribution": attention[:, None] * logits,
    }
    write_scores(
        run / "scores" / "abmil" / "huge.h5",
        coords,
        maps,
        attrs={"classes": ["normal", "tumor"], "probs": [0.1, 0.9], "pred": 1, "model": "abmil", "slide_id": "huge"},
        coords_attrs={
            "patch_size_level0": TILE,
            "patch_size": TILE,
            "patch_level": 0,
            "slide_mpp": MPP,
            "level_dim": [WIDTH, HEIGHT],
            "slide_path": str(slide),
            "slide_id": "huge",
        },
    )
    return len(coords)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """Keep-alive connections, like a browser's: ``CONNECTIONS`` at a time."""

    def __init__(self, port: int) -> None:
        self.pool: Queue = Queue()
        for _ in range(CONNECTIONS):
            self.pool.put(http.client.HTTPConnection("127.0.0.1", port, timeout=120))

    def get(self, path: str) -> tuple[float, bytes]:
        connection = self.pool.get()
        try:
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
            return time.perf_counter() - started, body
        finally:
            self.pool.put(connection)

    def many(self, paths: list[str]) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            list(pool.map(self.get, paths))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="logit_tumor", help="overlay map")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    slide, run = CACHE / "huge.svs", CACHE / "run"
    if not slide.exists():
        started = time.perf_counter()
        build_slide(slide)
        print(f"built {slide} ({slide.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s")
    n = build_run(run, slide)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "wsi_mil", "view", str(run), "--port", str(port), "--quiet"], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("viewer did not start") from None
                time.sleep(0.05)
        client = Client(port)
        cpu0, own0 = cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
        info_s, body = client.get("/api/slides/huge/info")
        max_level = json.loads(body)["max_level"]
        overview = max_level - 7  # downsample 128: the whole slide in 782 x 625 px
        tile = f"/tiles/huge/map/abmil/{args.map}"
        first_s, _ = client.get(f"{tile}/{overview}/1_1.png?scale=slide")
        first0_s, _ = client.get(f"{tile}/{max_level}/117_156.png?scale=slide")
        # 10 x 10 level-0 tiles inside the left tissue section, none asked for before
        area = [(col, row) for row in range(140, 150) for col in range(100, 110)]
        overlay_s = client.many([f"{tile}/{max_level}/{c}_{r}.png?scale=slide" for c, r in area])
        area = [(col, row) for row in range(170, 180) for col in range(100, 110)]
        both = [f"/tiles/huge/image/{max_level}/{c}_{r}.jpeg" for c, r in area]
        both += [f"{tile}/{max_level}/{c}_{r}.png?scale=slide" for c, r in area]
        both_s = client.many(both)
        cpu1, own1 = cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        server.terminate()
        server.wait(30)
    own = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    print(f"slide {WIDTH} x {HEIGHT}, {n} patches of {TILE} px, map {args.map}, {CONNECTIONS} connections")
    print(f"info (ranges)                          {info_s * 1000:8.1f} ms")
    print(f"first overlay tile, whole-slide zoom   {first_s * 1000:8.1f} ms")
    print(f"first overlay tile, level 0            {first0_s * 1000:8.1f} ms")
    print(f"pan, 100 overlay tiles, level 0        {overlay_s:8.2f} s")
    print(f"pan, 100 slide + 100 overlay tiles     {both_s:8.2f} s")
    print(f"CPU seconds: server {cpu1 - cpu0:.2f}, client {own:.2f}")


if __name__ == "__main__":
    main()
