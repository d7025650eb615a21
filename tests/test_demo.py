"""The demo cohort, ``wsi-mil run CONFIG`` and ``wsi-mil demo`` with issue 6's targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.config import config_to_dict, load_config
from wsi_mil.demo_cohort import CohortSpec, build_cohort
from wsi_mil.errors import ConfigError
from wsi_mil.pipeline import load_run_config, run_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = CohortSpec(n_slides=4, width=2048, height=1536, seed=3)


def test_demo_yaml_holds_the_demo_settings(tmp_path: Path) -> None:
    from wsi_mil.demo import demo_config
    from wsi_mil.demo_cohort import _cohort

    config = config_to_dict(load_config(CONFIGS / "demo.yaml"))
    demo = config_to_dict(demo_config(_cohort(tmp_path, "test", ()), tmp_path / "run"))
    for key in ("slides", "out", "labels", "masks"):
        config["run"].pop(key), demo["run"].pop(key)
    assert config == demo


def test_cohort_slides_masks_labels(tmp_path: Path) -> None:
    """The cohort is built from the real H&E shipped in wsi_mil/data, and stain does not give its
    lesions away: they are not darker than the rest, and the darkest 128-um window of every tumor
    slide lies outside its lesion (on a normal look-alike: lymphoid aggregate, debris, fold)."""
    from PIL import Image

    from wsi_mil.explain.annotations import load_ground_truth
    from wsi_mil.explain.stain_baseline import stain_statistics
    from wsi_mil.io.open import open_slide

    cohort = build_cohort(tmp_path / "cohort", spec=SMALL, workers=1)
    assert cohort.source.startswith("real H&E")
    labels = dict(line.split(",") for line in cohort.labels.read_text().split()[1:])
    assert sorted(labels) == list(cohort.slide_ids) and sorted(labels.values()) == ["normal"] * 2 + ["tumor"] * 2
    images = []
    for slide_id, label in labels.items():
        with open_slide(cohort.slides / f"{slide_id}.svs") as slide:
            assert slide.dimensions == (2048, 1536) and slide.mpp == pytest.approx(0.5)
            assert slide.level_downsamples[:2] == pytest.approx((1.0, 2.0))
            images.append(slide.read_region((0, 0), 2, slide.level_dimensions[2], as_array=True))
            level1 = slide.read_region((0, 0), 1, slide.level_dimensions[1], as_array=True)
        mask = np.asarray(Image.open(cohort.masks / f"{slide_id}.png")) > 0
        assert mask.shape == (1536 // 8, 2048 // 8)
        assert mask.any() == (label == "tumor")
        if label == "tumor":  # the GeoJSON outlines rasterize to the PNG mask
            truth = load_ground_truth(cohort.annotations / f"{slide_id}.geojson", (2048, 1536), max_side=256)
            assert (truth.lesion == mask).mean() > 0.97 and 0.02 < mask.mean() < 0.3
            image = images[-1].astype(float)  # level 2 is 1/8, as the mask
            tissue = image.mean(-1) < 215
            assert image[mask & tissue].mean() > image[~mask & tissue].mean() - 5  # the lesion is not darker
            windows = [
                (stain_statistics(level1[y : y + 128, x : x + 128])[1], y, x)
                for y in range(0, 768 - 127, 64)
                for x in range(0, 1024 - 127, 64)
            ]
            _, y, x = max(windows)  # 128 px at level 1 (1 um/px); 32 px of the mask (4 um/px)
            assert mask[y // 4 : y // 4 + 32, x // 4 : x // 4 + 32].mean() < 0.5, (
                f"{slide_id}: darkest window is lesion"
            )
    assert not np.array_equal(images[0], images[1])
    stamp = (cohort.slides / f"{cohort.slide_ids[0]}.svs").stat().st_mtime_ns
    build_cohort(tmp_path / "cohort", spec=SMALL, workers=1)  # complete: reused
    assert (cohort.slides / f"{cohort.slide_ids[0]}.svs").stat().st_mtime_ns == stamp


def _write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("run_section", "fragments"),
    [
        ("  slide: x\n", ["run.slide", "allowed", "slides"]),
        ("  slides: nowhere\n  out: out\n", ["run.slides", "nowhere", "no such slide"]),
        ("  slides: .\n  out: out\n  labels: labels.csv\n", ["run.labels", "labels.csv", "no such labels CSV"]),
        ("  slides: .\n", ["run.out is not set"]),
        ("  slides: .\n  out: out\n  models: [abmil, transmil]\n", ["run.models", "transmil", "ilam"]),
        ("  slides: .\n  out: out\n  stages: [tile, stitch]\n", ["stitch", "allowed"]),
        ("  slides: .\n  out: out\nextract:\n  encoder: uni\n", ["extract.encoder", "uni", "checkpoint_path"]),
        ("  slides: .\n  out: out\nextract:\n  checkpoint_path: nowhere.pth\n", ["nowhere.pth"]),
    ],
)
def test_run_config_errors_name_key_and_file_before_any_work(
    tmp_path: Path, run_section: str, fragments: list[str]
) -> None:
    path = _write_config(tmp_path, "run:\n" + run_section)
    with pytest.raises(ConfigError) as info:
        run_pipeline(load_run_config(path), where=str(path))
    for fragment in (str(path), *fragments):
        assert fragment in str(info.value)
    assert not (tmp_path / "out").exists()
    assert main(["run", str(path), "--quiet"]) == 2


@pytest.mark.slow
def test_demo_meets_the_issue_targets(tmp_path: Path) -> None:
    """The demo cohort and settings, every stage but the heatmap drawing (tested in
    test_pipeline_cli; the targets need only the scores): both heads reach slide ROC-AUC >= 0.95
    while the best stain statistic stays <= 0.75, and the best learned map's patch ROC-AUC is
    >= 0.90 and >= the stain maps' + 0.15."""
    from wsi_mil.demo import format_report, run_demo, targets

    result = run_demo(out=tmp_path / "demo", stages=("tile", "extract", "train", "predict", "evaluate"), progress=False)
    assert result.pipeline.failed == 0
    checks = targets(result)
    assert [(name.split(" ")[0], model) for name, model, _, _ in checks[:2]] == [("slide", "abmil"), ("slide", "ilam")]
    assert [name.split(" ")[:2] for name, *_ in checks[2:]] == [
        ["stain", "baseline"],
        ["best", "learned"],
        ["best", "map"],
    ]
    assert all(met for *_, met in checks), format_report(result)
