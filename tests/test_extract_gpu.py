"""The CUDA extraction path (autocast, pinned memory, DataLoader processes): skipped without a GPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_mil.config import Config, ExtractConfig, ParallelConfig  # noqa: E402
from wsi_mil.features.extract import extract_run  # noqa: E402
from wsi_mil.io.discover import SlideSource  # noqa: E402
from wsi_mil.store.features import read_features  # noqa: E402
from wsi_mil.tiling import tile_slides  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")


@pytest.mark.parametrize("loader", ["processes", "threads"])
def test_cuda_features_match_cpu(tmp_path: Path, reference_slide: Path, loader: str) -> None:
    base = ExtractConfig(encoder="resnet18", weights="random", batch_size=8)
    tile_slides(
        [SlideSource(reference_slide, "reference")],
        tmp_path,
        config=Config(parallel=ParallelConfig(workers=0)),
        progress=False,
    )
    runs = {}
    for device in ("cpu", "cuda"):
        config = Config(
            extract=replace(base, device=device, loader=loader, num_workers=2, feature_format="h5"),
            parallel=ParallelConfig(workers=0),
        )
        [record] = extract_run(tmp_path, config=config, progress=False, overwrite=True)
        assert record["status"] == "done" and record["device"].startswith(device)
        runs[device] = read_features(tmp_path / "features" / "resnet18" / "reference.h5").features
    # CUDA runs under fp16 autocast: close to the float32 CPU features, not equal.
    np.testing.assert_allclose(runs["cuda"], runs["cpu"], rtol=0.05, atol=0.05)
    assert np.corrcoef(runs["cuda"].ravel(), runs["cpu"].ravel())[0, 1] > 0.999
