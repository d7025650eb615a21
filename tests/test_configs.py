"""Every file in configs/ loads with the real loader, and the worked examples do what their
comments say: the Camelyon16 layout is found (slides, ids, XML masks), the BreakHis settings
tile a microscope field without MPP metadata, and the commands in the comments parse.

(tests/test_config.py checks the loader itself and that default.yaml equals the defaults.)
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml

from tests.test_readme import parse_or_fail, shell_commands, wsi_mil_argv
from wsi_mil.config import SECTIONS, TissueConfig, load_config
from wsi_mil.errors import ConfigError
from wsi_mil.pipeline import load_run_config
from wsi_mil.pipeline_config import check_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.glob("*.yaml"))
EXAMPLES = ("default", "demo", "camelyon16", "breakhis", "cluster")
RUN_PATHS = ("slides", "out", "labels", "masks")


def test_the_worked_examples_are_there() -> None:
    assert set(EXAMPLES) <= {path.stem for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_loads_with_the_real_loader(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    config = load_run_config(path)
    for section, values in data.items():  # every key written is a real key, and it took effect
        assert section in SECTIONS
        for key, value in (values or {}).items():
            if section == "run" and key in RUN_PATHS and value is not None:
                continue  # made absolute, relative to the file
            loaded = getattr(getattr(config, section), key)
            assert loaded == (tuple(value) if isinstance(value, list) else value), f"{path.name}: {section}.{key}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_an_unknown_key_in_it_is_an_error(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    copy = tmp_path / path.name
    if re.search(r"^train:", text, flags=re.M):
        copy.write_text(re.sub(r"^train:.*\n", "train:\n  epochz: 3\n", text, count=1, flags=re.M))
    else:
        copy.write_text(text + "\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(copy)


def _comment_commands(path: Path) -> list[str]:
    """Command lines in the comments: those indented by two or more spaces after the ``#``."""
    comments = [m.group(1) for line in path.read_text().splitlines() if (m := re.match(r"^\s*#\s{2,}(\S.*)$", line))]
    return [c for c in shell_commands(comments) if wsi_mil_argv(c) is not None]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_commands_in_its_comments_parse(path: Path) -> None:
    for command in _comment_commands(path):
        argv = wsi_mil_argv(command)
        args = parse_or_fail(argv, f"{path.name}: {command}")
        config_path = getattr(args, "config", None)
        if config_path is not None:  # --config / run CONFIG: the file exists and takes the --set keys
            load_config(CONFIGS.parent / config_path, sets=args.set)


def test_every_example_says_how_to_run_it() -> None:
    for name in ("camelyon16", "breakhis", "cluster"):
        assert any(wsi_mil_argv(c)[0] == "run" for c in _comment_commands(CONFIGS / f"{name}.yaml")), name


# ---------------------------------------------------------------------- Camelyon16

ASAP_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="100" Y="100" /><Coordinate Order="1" X="600" Y="100" />
        <Coordinate Order="2" X="600" Y="600" /><Coordinate Order="3" X="100" Y="600" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="300" Y="300" /><Coordinate Order="1" X="400" Y="300" />
        <Coordinate Order="2" X="400" Y="400" /><Coordinate Order="3" X="300" Y="400" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_camelyon16_layout_slides_ids_and_masks(tmp_path: Path) -> None:
    from wsi_mil.explain.annotations import find_annotation, load_ground_truth
    from wsi_mil.io.discover import find_slides

    root = tmp_path / "CAMELYON16"
    for relative in ("training/tumor/tumor_001.tif", "training/normal/normal_001.tif", "testing/images/test_001.tif"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).touch()
    for folder in ("training", "testing"):
        (root / folder / "lesion_annotations").mkdir()
        (root / folder / "lesion_annotations" / f"{'tumor' if folder == 'training' else 'test'}_001.xml").write_text(
            ASAP_XML
        )
    (root / "testing" / "reference.csv").write_text("test_001,Tumor,Macro,Primary\n")
    (root / "labels.csv").write_text("slide_id,label\ntumor_001,tumor\nnormal_001,normal\n")
    path = CONFIGS / "camelyon16.yaml"
    written = load_run_config(path).run
    assert (written.slides, written.out, written.labels, written.masks) == (
        "/data/CAMELYON16",
        "/data/camelyon16-run",
        "/data/CAMELYON16/labels.csv",
        "/data/CAMELYON16/training/lesion_annotations",
    )
    moved = [
        f"run.{key}={getattr(written, key).replace('/data/CAMELYON16', str(root)).replace('/data', str(tmp_path))}"
        for key in RUN_PATHS
    ]  # the file's paths, moved under tmp_path
    config = load_run_config(path, sets=moved)
    check_run_config(config, where=path.name)  # every input exists, encoder and heads are registered

    sources = find_slides([config.run.slides], extensions=config.tiling.extensions)
    assert sorted(s.slide_id for s in sources) == ["normal_001", "test_001", "tumor_001"]  # no XML, no CSV
    xml = find_annotation(config.run.masks, "tumor_001")
    assert xml is not None and find_annotation(config.run.masks, "normal_001") is None
    truth = load_ground_truth(xml, (1000, 1000))
    lesion = truth.lesion
    scale = lesion.shape[1] / 1000
    assert lesion[int(200 * scale), int(200 * scale)] and not lesion[int(350 * scale), int(350 * scale)]  # hole
    assert not lesion[int(800 * scale), int(800 * scale)]


# ---------------------------------------------------------------------- BreakHis


def _breakhis_field(shared: Path, path: Path) -> None:
    """A 700 x 460 PNG of real H&E (cropped from CMU-1-Small-Region), as BreakHis stores them."""
    from wsi_mil.io import open_slide

    with open_slide(shared / "slides" / "CMU-1-Small-Region.svs") as slide:
        rgb = np.asarray(slide.read_region((700, 2000), 0, (700, 460)).convert("RGB"))
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _snippet(path: Path, first: str, last: str) -> str:
    """The shell lines of ``path``'s comments from the one starting with ``first`` to the one ending with ``last``."""
    lines = [
        line.removeprefix("#").removeprefix("   ") for line in path.read_text().splitlines() if line.startswith("#")
    ]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith(last))
    return "\n".join(lines[start : end + 1])


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("find") is None, reason="needs bash and find")
def test_breakhis_lists_and_tiling_without_mpp_metadata(tmp_path: Path, shared_data: Path) -> None:
    import h5py

    from wsi_mil.cli import main

    path = CONFIGS / "breakhis.yaml"
    breast = tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"
    names = {"40X": "SOB_B_A-14-22549AB-40-001", "100X": "SOB_M_DC-14-2523-100-012"}
    for magnification, name in names.items():
        folder = (
            "benign/SOB/adenosis/SOB_B_A_14-22549AB"
            if "_B_" in name
            else "malignant/SOB/ductal_carcinoma/SOB_M_DC_14-2523"
        )
        _breakhis_field(shared_data, breast / folder / magnification / f"{name}.png")
    out = tmp_path / "breakhis"
    out.mkdir()
    lists = _snippet(path, "for m in 40X", "done").replace("mpp=...", "mpp=0.1")  # as fine as at 400X
    labels = _snippet(path, "{ echo slide_id,label,patient_id", "labels.csv")
    script = "\n".join(["set -eu", f"cd {breast}", lists, labels]).replace("/data/breakhis", str(out))
    subprocess.run(["bash", "-c", script], check=True)
    header, *rows = (out / "labels.csv").read_text().splitlines()
    assert header == "slide_id,label,patient_id"
    assert sorted(rows) == ["SOB_B_A-14-22549AB-40-001,benign,22549AB", "SOB_M_DC-14-2523-100-012,malignant,2523"]
    slide_list = (out / "40X.csv").read_text().splitlines()
    assert slide_list[0] == "path,mpp" and len(slide_list) == 2 and slide_list[1].endswith("-40-001.png,0.1")

    run = tmp_path / "run"
    assert (
        main(["tile", str(out / "40X.csv"), "--out", str(run), "--config", str(path), "--workers", "0", "--quiet"]) == 0
    )
    with h5py.File(run / "bags" / f"{names['40X']}.h5", "r") as bag:
        attrs = dict(bag["coords"].attrs)
        n_patches = bag["coords"].shape[0]
    assert n_patches == 15 and attrs["patch_size"] == 224 and attrs["patch_level"] == 0  # 5 x 3, half overlap
    assert attrs["slide_mpp"] == pytest.approx(0.1) and attrs["mpp_source"] == "override"
    changed = set(yaml.safe_load(path.read_text())["tissue"]) - {"remove_pen"}
    defaults = [f"--set=tissue.{key}={getattr(TissueConfig(), key)}" for key in sorted(changed)]
    assert (
        main(
            [
                "tile",
                str(out / "40X.csv"),
                "--out",
                str(tmp_path / "default-tissue"),
                "--config",
                str(path),
                "--workers",
                "0",
                "--quiet",
                *defaults,
            ]
        )
        == 0
    )
    with h5py.File(tmp_path / "default-tissue" / "bags" / f"{names['40X']}.h5", "r") as bag:
        assert bag["coords"].shape[0] == 0  # the default tissue sizes drop this 70 x 46 um field whole
    # No MPP at all: level-0 tiling needs none.
    bare = tmp_path / "bare"
    image = next(breast.rglob("*-100-012.png"))
    assert main(["tile", str(image), "--out", str(bare), "--config", str(path), "--workers", "0", "--quiet"]) == 0
    with h5py.File(bare / "bags" / f"{names['100X']}.h5", "r") as bag:
        assert bag["coords"].shape[0] > 0 and math.isnan(float(bag["coords"].attrs["slide_mpp"]))


def test_breakhis_magnification_folders_become_feature_sets(tmp_path: Path) -> None:
    from wsi_mil.mil.data import find_feature_sets

    linked = tmp_path / "by-magnification"
    linked.mkdir()
    for magnification in ("40X", "100X"):
        features = tmp_path / "runs" / magnification / "features" / "efficientnet_lite0"
        features.mkdir(parents=True)
        (features / f"SOB_B_A-14-22549AB-{magnification[:-1]}-001.h5").touch()
        (linked / magnification).symlink_to(features)
    assert "ln -s /data/breakhis/runs/$m/features/efficientnet_lite0" in (CONFIGS / "breakhis.yaml").read_text()
    sets = find_feature_sets([linked])
    assert sorted(s.key for s in sets) == ["100X", "40X"]
    assert {s.key: list(s.files) for s in sets}["40X"] == ["SOB_B_A-14-22549AB-40-001"]


# ---------------------------------------------------------------------- cluster


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_cluster_config_sends_tasks_to_the_scheduler(tmp_path: Path, make_slide) -> None:
    """cluster.yaml's settings with its scheduler address pointed at a real (in-process) Dask
    scheduler: the tile tasks run on that scheduler's worker."""
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from wsi_mil.io.discover import find_slides
    from wsi_mil.tiling.tile import tile_slides

    class Finished(SchedulerPlugin):
        keys: ClassVar[list[str]] = []  # shared: the scheduler holds the plugin instance

        def transition(self, key: str, start: str, finish: str, *args: object, **kwargs: object) -> None:
            if finish == "memory":
                self.keys.append(str(key))

    slide = make_slide()
    written = load_config(CONFIGS / "cluster.yaml")
    assert re.match(r"^tcp://[\w.-]+:\d+$", written.parallel.scheduler)
    assert written.extract.loader == "threads"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cluster.scheduler.add_plugin(Finished())
        config = load_config(CONFIGS / "cluster.yaml", sets=[f"parallel.scheduler={cluster.scheduler_address}"])
        records = tile_slides(
            find_slides([slide], extensions=config.tiling.extensions), tmp_path, config=config, progress=False
        )
    assert len(Finished.keys) == 1  # the one slide's task ran on the scheduler's worker
    assert [r["status"] for r in records] == ["done"] and records[0]["n_patches"] == 24
