"""Fixtures: the shared real data (skipped cleanly when absent) and synthetic slides."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wsi_mil.datasets import shared_data_dir, shipped_data_dirs
from wsi_mil.synthetic import Region, write_synthetic_slide

#: Why a ``restricted_data`` test skips on a fresh clone.
RESTRICTED_REASON = (
    "needs real data that may not be redistributed (TCGA slide, kidney IHC strip, boxes.tiff, "
    "dicom-boxes/, bad/, GlaS, BreakHis): not shipped in the repository; put the shared data at "
    "../shared/data or set WSI_MIL_DATA"
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("restricted_data") and shared_data_dir() is None:
        pytest.skip(RESTRICTED_REASON)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real test data, in the layout of ../shared/data (``slides/``, ``tiles/``, ``kather2016-samples/``).

    Files shipped with the repository come first (wsi_mil/data, tests/data: every fresh clone
    has them); the shared folder (../shared/data or $WSI_MIL_DATA) adds the rest when it is on
    this machine. The result is a folder of links to both. Tests that read a file only the
    shared folder has are marked ``restricted_data`` and skip without it."""
    roots = [*shipped_data_dirs(), *filter(None, [shared_data_dir()])]
    view = tmp_path_factory.mktemp("real-data")
    for root in roots:
        for path in sorted(root.rglob("*")):
            target = view / path.relative_to(root)
            if path.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
    return view


#: The reference synthetic slide: 4096x3072 at 0.5 um/px, levels 1/4/16, one tissue
#: rectangle aligned to the 256-px grid: 6 x 4 = 24 patches of 256 px at 0.5 um/px.
REFERENCE_REGION = Region(1024, 512, 1536, 1024)
REFERENCE_COORDS = sorted((x, y) for x in range(1024, 2560, 256) for y in range(512, 1536, 256))


@pytest.fixture(scope="session")
def make_slide(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory for synthetic Aperio-style slides, cached per argument set."""
    cache: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("slides")

    def make(name: str = "reference", **kwargs) -> Path:
        kwargs.setdefault("width", 4096)
        kwargs.setdefault("height", 3072)
        kwargs.setdefault("mpp", 0.5)
        kwargs.setdefault("regions", (REFERENCE_REGION,))
        kwargs.setdefault("downsamples", (1, 4, 16))
        key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            suffix = "" if "." in name else ".svs"
            cache[key] = write_synthetic_slide(folder / f"{name}{suffix}", **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def reference_slide(make_slide: Callable[..., Path]) -> Path:
    return make_slide()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny models: more threads gain nothing there,
    and on a busy 2-core machine they spin. Use with ``pytest.mark.usefixtures``."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
