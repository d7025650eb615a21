"""The extraction stage: patch sources, feature files, corrupt tiles, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_mil.config import Config, ExtractConfig, ParallelConfig, TilingConfig  # noqa: E402
from wsi_mil.features.extract import extract_run, find_jobs  # noqa: E402
from wsi_mil.features.reading import RegionSource, TileSource, make_source  # noqa: E402
from wsi_mil.io import open_slide  # noqa: E402
from wsi_mil.io.discover import SlideSource  # noqa: E402
from wsi_mil.store import read_bag  # noqa: E402
from wsi_mil.store.features import read_features  # noqa: E402
from wsi_mil.synthetic import Region, write_synthetic_slide  # noqa: E402
from wsi_mil.tiling import tile_slides  # noqa: E402

FAST = ExtractConfig(encoder="resnet18", weights="random", num_workers=0, batch_size=8, freeze="eager")


def _config(extract: ExtractConfig = FAST, **tiling) -> Config:
    return Config(tiling=TilingConfig(**tiling), extract=extract, parallel=ParallelConfig(workers=0))


def _tile(run_dir: Path, *slides: Path, **tiling) -> None:
    records = tile_slides([SlideSource(s, s.stem) for s in slides], run_dir, config=_config(**tiling), progress=False)
    assert all(r["status"] == "done" for r in records)


def _corrupt_tile(path: Path, x: int, y: int) -> None:
    """Overwrite the start of the level-0 tile holding (x, y) with junk: its JPEG no longer decodes."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        index = (y // page.tilelength) * across + x // page.tilewidth
        offset = page.dataoffsets[index]
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00garbage\xff" * 8)


def test_direct_tiles_equal_read_region(tmp_path: Path, reference_slide: Path) -> None:
    _tile(tmp_path, reference_slide)
    bag = read_bag(tmp_path / "bags" / "reference.h5")
    with open_slide(reference_slide) as slide:
        direct = make_source(bag, slide)
        region = make_source(bag, slide, direct_tiles=False)
    assert isinstance(direct, TileSource) and isinstance(region, RegionSource)
    for index in range(len(bag)):
        np.testing.assert_array_equal(direct.read(index), region.read(index))


def test_unaligned_grids_fall_back_to_read_region(tmp_path: Path, reference_slide: Path) -> None:
    _tile(tmp_path, reference_slide, overlap=0.25)  # patch corners off the tile grid
    bag = read_bag(tmp_path / "bags" / "reference.h5")
    with open_slide(reference_slide) as slide:
        assert isinstance(make_source(bag, slide), RegionSource)


def test_extract_run_writes_feature_files(tmp_path: Path, reference_slide: Path, make_slide) -> None:
    glass = make_slide("glass", regions=())
    _tile(tmp_path, reference_slide, glass)
    records = extract_run(tmp_path, config=_config(), progress=False)
    by_id = {r["slide_id"]: r for r in records}
    assert by_id["reference"]["status"] == "done" and by_id["reference"]["patch_source"] == "tiles"
    features = read_features(tmp_path / "features" / "resnet18" / "reference.h5")
    bag = read_bag(tmp_path / "bags" / "reference.h5")
    assert features.features.shape == (24, 512) and features.features.dtype == np.float32
    np.testing.assert_array_equal(features.coords, bag.coords)
    assert np.isfinite(features.features).all() and features.features.std() > 0
    assert features.attrs["weights"] == "random" and features.attrs["encoder"] == "resnet18"
    assert features.attrs["embed_dim"] == 512 and features.attrs["n_failed"] == 0
    empty = read_features(tmp_path / "features" / "resnet18" / "glass.h5")
    assert empty.features.shape == (0, 512)
    # A rerun skips complete files.
    again = extract_run(tmp_path, config=_config(), progress=False)
    assert {r["status"] for r in again} == {"skipped"}


def test_tiles_region_and_stored_pixels_give_the_same_features(tmp_path: Path, reference_slide: Path) -> None:
    _tile(tmp_path / "a", reference_slide)
    _tile(tmp_path / "b", reference_slide, save_pixels=True, bag_format="zarr")
    extract_run(tmp_path / "a", config=_config(), progress=False)
    no_tiles = _config(replace(FAST, direct_tiles=False, feature_format="zarr"))
    extract_run(tmp_path / "a", config=no_tiles, progress=False)
    extract_run(tmp_path / "b", config=_config(), progress=False)
    tiles = read_features(tmp_path / "a" / "features" / "resnet18" / "reference.h5")
    region = read_features(tmp_path / "a" / "features" / "resnet18" / "reference.zarr")
    stored = read_features(tmp_path / "b" / "features" / "resnet18" / "reference.h5")
    assert (tiles.attrs["patch_source"], region.attrs["patch_source"], stored.attrs["patch_source"]) == (
        "tiles",
        "read_region",
        "stored",
    )
    np.testing.assert_allclose(region.features, tiles.features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stored.features, tiles.features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("loader", "workers"), [("threads", 2), ("processes", 1), ("processes", 0)])
def test_loaders_give_the_same_batches_in_order(
    reference_slide: Path, tmp_path: Path, loader: str, workers: int
) -> None:
    from wsi_mil.features.loaders import make_loader, ring_size
    from wsi_mil.features.reading import PatchDataset

    _tile(tmp_path, reference_slide)
    bag = read_bag(tmp_path / "bags" / "reference.h5")
    with open_slide(reference_slide) as slide:
        source = make_source(bag, slide)
    expected = np.stack([source.read(i) for i in range(len(bag))])
    source.close()
    batches = make_loader(
        PatchDataset(source, blank_size=source.size, ring_size=ring_size()), kind=loader, batch_size=5, workers=workers
    )
    seen = []
    for images, valid, index in batches:
        assert valid.all()
        np.testing.assert_array_equal(images.numpy(), expected[index.numpy()])
        seen.extend(index.tolist())
    assert seen == list(range(len(bag)))
    if loader == "threads":
        assert not source._handles  # every reading thread's handle was closed with its thread


@pytest.mark.parametrize(
    ("direct_tiles", "loader"), [(True, "threads"), (False, "threads"), (True, "processes"), (False, "processes")]
)
def test_a_corrupt_tile_costs_one_patch_not_the_slide(tmp_path: Path, direct_tiles: bool, loader: str) -> None:
    slide = write_synthetic_slide(
        tmp_path / "damaged.svs",
        width=4096,
        height=3072,
        mpp=0.5,
        regions=[Region(1024, 512, 1536, 1024)],
        downsamples=(1, 4, 16),
    )
    _tile(tmp_path / "run", slide)
    _corrupt_tile(slide, 1280, 768)
    config = _config(replace(FAST, direct_tiles=direct_tiles, loader=loader, num_workers=2))
    [record] = extract_run(tmp_path / "run", config=config, progress=False)
    assert record["status"] == "done" and record["n_failed"] == 1 and record["n_patches"] == 23
    features = read_features(tmp_path / "run" / "features" / "resnet18" / "damaged.h5")
    assert features.failed_coords.tolist() == [[1280, 768]]
    assert [1280, 768] not in features.coords.tolist() and len(features.features) == 23
    assert features.attrs["failed_policy"] == "removed" and features.attrs["n_failed"] == 1


def test_a_changed_slide_is_refused(tmp_path: Path) -> None:
    slide = write_synthetic_slide(
        tmp_path / "case.svs", width=2048, height=2048, mpp=0.5, regions=[Region(0, 0, 2048, 2048)], downsamples=(1,)
    )
    _tile(tmp_path / "run", slide)
    write_synthetic_slide(slide, width=3072, height=2048, mpp=0.5, regions=[Region(0, 0, 3072, 2048)], downsamples=(1,))
    [record] = extract_run(tmp_path / "run", config=_config(), progress=False)
    assert record["status"] == "failed"
    assert "2048x2048" in record["error"] and "3072x2048" in record["error"] and "--overwrite" in record["error"]


def test_bag_sets_map_to_feature_sets(tmp_path: Path, reference_slide: Path) -> None:
    _tile(tmp_path, reference_slide, target_mpp=(0.5, 1.0))
    jobs = find_jobs(tmp_path, ExtractConfig(encoder="timm:vit_small_patch16_224"))
    assert sorted((j.bag_set, j.out_path.relative_to(tmp_path).as_posix()) for j in jobs) == [
        ("0.5mpp", "features/timm-vit_small_patch16_224/0.5mpp/reference.h5"),
        ("1mpp", "features/timm-vit_small_patch16_224/1mpp/reference.h5"),
    ]


def test_real_imagenet_features_on_a_real_slide(tmp_path: Path, shared_data: Path) -> None:
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    _tile(tmp_path, slide, target_mpp=(1.0,))
    config = _config(ExtractConfig(num_workers=1, batch_size=16))  # the offline default encoder
    [record] = extract_run(tmp_path, config=config, progress=False)
    assert record["status"] == "done" and record["patch_source"] == "read_region"  # 240-px tiles: no alignment
    features = read_features(tmp_path / "features" / "efficientnet_lite0" / f"{slide.stem}.h5")
    assert features.features.shape == (record["n_patches"], 1280) and record["n_patches"] > 0
    assert features.attrs["weights"].startswith("imagenet:")
    assert np.isfinite(features.features).all() and features.features.std(axis=0).mean() > 0


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsi_mil.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_extract_through_dask_and_resume_after_kill(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    for index in range(4):
        write_synthetic_slide(
            slides / f"s{index}.svs",
            width=2048,
            height=1024,
            mpp=0.5,
            regions=[Region(256 * index, 0, 1024, 1024)],
            downsamples=(1, 4),
        )
    run, reference = tmp_path / "run", tmp_path / "reference"
    for out in (run, reference):
        assert _run("tile", str(slides), "--out", str(out), "--workers", "0", "--quiet").returncode == 0
    args = ["--encoder", "resnet18", "--weights", "random", "--batch-size", "16", "--quiet"]
    done = _run("extract", str(reference), "--workers", "1", *args)  # a real LocalCluster, loader workers inside
    assert done.returncode == 0, done.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "wsi_mil.cli", "extract", str(run), "--workers", "0", *args],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    features = run / "features" / "resnet18"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(features.glob("*.h5"))) < 1:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 1 <= len(list(features.glob("*.h5"))) < 4, "the run should have been killed part-way"
    resumed = _run("extract", str(run), "--workers", "0", *args)
    assert resumed.returncode == 0, resumed.stderr
    for index in range(4):
        a = read_features(features / f"s{index}.h5")
        b = read_features(reference / "features" / "resnet18" / f"s{index}.h5")
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    assert not [p for p in features.iterdir() if ".partial-" in p.name]


def _loader_in_daemon(queue) -> None:  # runs in a daemonic process, like a Dask worker
    import torch

    from wsi_mil.errors import WsiMilError
    from wsi_mil.features.loaders import resolve_loader

    cuda = torch.device("cuda")
    try:
        resolve_loader("processes", cuda)
        refused = ""
    except WsiMilError as error:
        refused = str(error)
    queue.put((resolve_loader("auto", cuda), refused))


def test_daemonic_workers_read_with_threads() -> None:
    """Dask workers are daemonic and may not start DataLoader processes: auto picks threads
    there (processes elsewhere on CUDA), and an explicit ``processes`` is a clear error."""
    import multiprocessing

    import torch

    from wsi_mil.features.loaders import resolve_loader

    assert resolve_loader("auto", torch.device("cuda")) == "processes"
    assert resolve_loader("auto", torch.device("cpu")) == "threads"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_loader_in_daemon, args=(queue,), daemon=True)
    process.start()
    kind, refused = queue.get(timeout=120)
    process.join()
    assert kind == "threads"
    assert "extract.loader: threads" in refused and "DASK_DISTRIBUTED__WORKER__DAEMON" in refused
