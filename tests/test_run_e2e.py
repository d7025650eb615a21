"""``wsi-mil run CONFIG`` end to end through the installed command, in subprocesses.

A small generated cohort (drawn textures, planted lesions, masks, labels), a YAML config
written into tmp, then every artefact of the run is opened and checked; a run killed
(SIGKILL of its process group) in the middle of feature extraction and rerun must give
the numbers of the uninterrupted run; ``--set`` is applied and recorded, a bad key fails
before any work; a rerun with changed settings over an existing run folder is refused
unless ``--overwrite``; ``pipelines/run_all.sh`` runs the staged scripts.

Plumbing only: the encoder is timm's tiny ``test_resnet`` with random weights (asked for
explicitly), two folds, two epochs; no accuracy is claimed. The subprocesses run torch
on one thread (``OMP_NUM_THREADS=1``): tiny models on a busy machine gain nothing from more.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from wsi_mil.cli import main
from wsi_mil.demo_cohort import Cohort, CohortSpec, build_cohort

REPO = Path(__file__).resolve().parents[1]
#: Six slides of 1536 x 1024 px at 0.5 um/px (three with a planted lesion): 128-px patches
#: give ~40-60 patches a slide, so extraction lasts long enough to be caught in the middle.
SPEC = CohortSpec(n_slides=6, width=1536, height=1024, seed=5)
ENCODER, ENCODER_DIR = "timm:test_resnet", "timm-test_resnet"
HEADS = ("abmil", "ilam")
CONFIG = """\
tiling: {{target_mpp: [0.5], patch_size: 128}}
tissue: {{remove_pen: false}}
extract: {{encoder: "{encoder}", weights: random, device: cpu, batch_size: 8, threads: 1}}
train: {{folds: 2, epochs: 3, min_epochs: 1, val_fraction: 0.0, device: cpu}}
heatmap:
  mpp: 4.0
  maps: [attention_pct]
  formats: [zarr, tiff, png, geojson]
  thumbnail_size: 256
  cam_top_k: 0  # CAMs: tests/test_pipeline_cli.py
parallel: {{workers: 0}}
run:
  slides: {slides}
  out: {out}
  labels: {labels}
  masks: {masks}
  models: [abmil, ilam]
"""
#: The command of every full run here: the YAML says 3 epochs, --set makes it 2.
SETS = ("--set", "train.epochs=2")
RUN_TIMEOUT = 600


def wsi_mil_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m wsi_mil``."""
    script = Path(sys.executable).with_name("wsi-mil")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsi_mil"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``wsi-mil ARGS`` in a subprocess started in ``cwd`` (a tmp folder: nothing lands in the repository)."""
    return subprocess.run(
        [*wsi_mil_command(), *args], capture_output=True, text=True, timeout=timeout, env=environment(), cwd=cwd
    )


def write_config(path: Path, cohort: Cohort, out: Path) -> Path:
    path.write_text(
        CONFIG.format(encoder=ENCODER, slides=cohort.slides, out=out, labels=cohort.labels, masks=cohort.masks)
    )
    return path


@dataclass(frozen=True)
class Reference:
    cohort: Cohort
    config: Path
    run: Path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return build_cohort(tmp_path_factory.mktemp("cohort"), spec=SPEC, data=None, workers=1)


@pytest.fixture(scope="module")
def reference(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run through the real command."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "cfg.yaml", cohort, root / "run")
    done = run_cli("run", str(config), *SETS, "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    return Reference(cohort, config, root / "run")


def manifest(run: Path) -> list[dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- every artefact ---------------------------------------------------------------------


def _interior_patch(coords: np.ndarray, size: int) -> int:
    """The index of a patch whose four neighbours are patches too (the maps are drawn on tissue only)."""
    present = {(int(x), int(y)) for x, y in coords}
    for index, (x, y) in enumerate(present_list := [(int(x), int(y)) for x, y in coords]):
        if all(n in present for n in ((x - size, y), (x + size, y), (x, y - size), (x, y + size))):
            return index
    raise AssertionError(f"no interior patch among {len(present_list)}")


def test_every_artefact_of_the_run(reference: Reference) -> None:
    import tiffslide
    import zarr
    from PIL import Image

    from wsi_mil.io.open import open_slide
    from wsi_mil.store.bags import read_bag
    from wsi_mil.store.features import read_features
    from wsi_mil.store.scores import read_scores

    run, cohort = reference.run, reference.cohort
    ids = list(cohort.slide_ids)
    labels = {row["slide_id"]: row["label"] for row in read_csv(cohort.labels)}
    patches = {}
    for slide_id in ids:
        with open_slide(cohort.slides / f"{slide_id}.svs") as slide:
            dimensions = slide.dimensions
        bag = read_bag(run / "bags" / f"{slide_id}.h5")
        assert bag.coords.dtype == np.int64 and bag.coords.shape[1] == 2 and len(bag) > 10, slide_id
        assert bag.attrs["patch_size"] == 128 and bag.attrs["target_mpp"] == pytest.approx(0.5)
        assert bag.attrs["slide_id"] == slide_id
        assert Path(bag.attrs["slide_path"]) == (cohort.slides / f"{slide_id}.svs").resolve()
        assert (bag.coords >= 0).all() and (bag.coords + 128 <= np.array(dimensions)).all()
        Image.open(run / "qc" / f"{slide_id}.png").verify()
        patches[slide_id] = len(bag)

        features = read_features(run / "features" / ENCODER_DIR / f"{slide_id}.h5")
        assert features.features.dtype == np.float32 and features.features.shape[0] == len(bag)
        assert np.isfinite(features.features).all() and features.features.std() > 0
        np.testing.assert_array_equal(features.coords, bag.coords)
        assert features.attrs["encoder"] == ENCODER and features.attrs["weights"] == "random"

        for head in HEADS:
            scores = read_scores(run / "scores" / head / f"{slide_id}.h5")
            np.testing.assert_array_equal(scores.coords, bag.coords)
            assert scores.classes == ["normal", "tumor"] and scores.attrs["fold_policy"] == "out_of_fold"
            assert scores.attrs["probs"].sum() == pytest.approx(1.0, abs=1e-5)
            assert scores.maps["attention_pct"].shape == (len(bag),)

            out = run / "heatmaps" / head / slide_id
            group = zarr.open_group(str(out / "attention_pct.ome.zarr"), mode="r")
            datasets = group.attrs["multiscales"][0]["datasets"]
            level0 = np.asarray(group[datasets[0]["path"]][...])
            assert level0.shape == (dimensions[1] // 8, dimensions[0] // 8)  # 4 um/px from 0.5
            assert np.nanmin(level0) >= 0.0 and np.nanmax(level0) == pytest.approx(1.0) and np.isnan(level0).any()
            with tiffslide.TiffSlide(out / "attention_pct.tiff") as tiff:
                assert tiff.dimensions == dimensions
                index = _interior_patch(bag.coords, 128)  # all tissue: painted over its whole square
                x, y = (int(v) for v in bag.coords[index])
                inside = np.asarray(tiff.read_region((x + 32, y + 32), 0, (64, 64), as_array=True))
                np.testing.assert_allclose(inside, scores.maps["attention_pct"][index])
                assert np.isnan(np.asarray(tiff.read_region((0, 0), 0, (64, 64), as_array=True))).all()  # glass
            with Image.open(out / "attention_pct_overlay.png") as png:
                assert max(png.size) <= 256 + 200 and png.mode in ("RGB", "RGBA")  # thumbnail + colour bar
            geojson = json.loads((out / "patches.geojson").read_text())
            assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == len(bag)

    for head in HEADS:
        model = run / "models" / head
        splits = read_csv(model / "splits.csv")
        assert sorted(row["slide_id"] for row in splits) == sorted(ids)
        for fold in (0, 1):
            fold_dir = model / f"fold_{fold}"
            assert (fold_dir / "model.safetensors").stat().st_size > 0
            assert json.loads((fold_dir / "config.json").read_text())["model"] == head
            metrics = json.loads((fold_dir / "metrics.json").read_text())
            assert metrics["n_test"] == 3 and set(metrics["test"]) >= {"roc_auc", "accuracy"}
            predictions = read_csv(fold_dir / "predictions.csv")
            assert len(predictions) == 3 and all(row["label"] == labels[row["slide_id"]] for row in predictions)
        table = read_csv(model / "metrics.csv")
        assert [row["fold"] for row in table] == ["0", "1", "mean", "std", "pooled"]
        assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in table[:3])
        summary = (model / "summary.md").read_text()
        assert f"Head `{head}`, 2 fold(s)" in summary and "| feature set |" in summary
        for name in ("roc.png", "confusion.png"):
            with Image.open(model / name) as image:
                assert image.size[0] > 100

        explanations = run / "explanations" / head
        assert "# Explanation metrics" in (explanations / "explanations.md").read_text()
        rows = read_csv(explanations / "explanations_per_slide.csv")
        assert {row["slide_id"] for row in rows} == set(ids)  # every slide has a mask (empty on normal ones)
        assert "attention_pct" in {row["map"] for row in read_csv(explanations / "explanations.csv")}
        assert {row["slide_id"] for row in read_csv(explanations / "faithfulness_per_slide.csv")} == set(ids)
        assert not (explanations / "cams_per_slide.csv").exists()  # no CAMs asked for

    rows = manifest(run)
    assert {row["status"] for row in rows} == {"done"}
    by_stage: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], {})[row["slide_id"]] = row
    assert set(by_stage) == {"tile", "extract", "predict", "heatmap", "evaluate-maps"}
    for stage in ("tile", "extract"):
        assert {s: int(r["n_patches"]) for s, r in by_stage[stage].items()} == patches
    for stage in (
        "predict",
        "heatmap",
        "evaluate-maps",
    ):  # one row per slide and head: the second head does not overwrite the first
        assert {(row["slide_id"], row["bag_set"]) for row in rows if row["stage"] == stage} == {
            (slide_id, head) for slide_id in ids for head in HEADS
        }

    saved = json.loads((run / "run_config.json").read_text())
    assert saved["run"] == {
        "slides": str(cohort.slides.resolve()),
        "out": str(run.resolve()),
        "labels": str(cohort.labels.resolve()),
        "masks": str(cohort.masks.resolve()),
        "models": list(HEADS),
        "stages": ["tile", "extract", "train", "predict", "heatmap", "evaluate"],
    }
    assert saved["extract"]["encoder"] == ENCODER and saved["extract"]["weights"] == "random"
    assert saved["tiling"]["patch_size"] == 128


# --- --set ------------------------------------------------------------------------------


def test_set_is_applied_and_recorded(reference: Reference) -> None:
    assert "epochs: 3" in reference.config.read_text()  # the YAML's value; the command said --set train.epochs=2
    assert json.loads((reference.run / "run_config.json").read_text())["train"]["epochs"] == 2
    for head in HEADS:
        for fold in (0, 1):
            fold_dir = reference.run / "models" / head / f"fold_{fold}"
            metrics = json.loads((fold_dir / "metrics.json").read_text())
            assert metrics["epochs_run"] == 2  # no validation split: no early stop
            assert json.loads((fold_dir / "config.json").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize(
    ("setting", "fragments"),
    [
        ("train.nope=1", ["train.nope", "allowed", "epochs", "min_epochs", "--set"]),
        ("trian.epochs=1", ["trian", "allowed", "train", "tiling"]),
        ("train.epochs=many", ["train.epochs", "'many'", "int"]),
        ("train.epochs", ["expected section.key=value"]),
        ("tiling.target_mpp=[0.5", ["tiling.target_mpp", "not valid YAML"]),
    ],
)
def test_bad_set_fails_before_any_work(cohort: Cohort, tmp_path: Path, setting: str, fragments: list[str]) -> None:
    config = write_config(tmp_path / "cfg.yaml", cohort, tmp_path / "run")
    done = run_cli("run", str(config), "--set", setting, "--quiet", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)
    assert not (tmp_path / "run").exists()


# --- kill and resume --------------------------------------------------------------------

ATTEMPTS = 3


def _feature_files(run: Path) -> list[Path]:
    folder = run / "features" / ENCODER_DIR
    return sorted(folder.glob("*.h5")) if folder.is_dir() else []


def _kill_during_extraction(config: Path, run: Path, n_slides: int, *options: str) -> int | None:
    """Start the run, SIGKILL its process group once half or more, but not all, feature files exist.

    Returns how many feature files the killed run left, or None when extraction could not be
    caught in the middle (the run finished it between two looks, or ended first)."""
    with (run.parent / f"{run.name}.stderr").open("w") as stderr:
        process = subprocess.Popen(
            [*wsi_mil_command(), "run", str(config), *options],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=environment(),
            cwd=run.parent,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if n_slides // 2 <= len(_feature_files(run)) < n_slides:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    left = len(_feature_files(run))
                    return left if left < n_slides else None
                time.sleep(0.005)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return None


def _strip_seconds(value: Any) -> Any:
    """A JSON value without its timings."""
    if isinstance(value, dict):
        return {k: _strip_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_strip_seconds(v) for v in value]
    return value


def _outputs(run: Path, slide_ids: list[str]) -> dict[str, Any]:
    """Every number the run produced, by name: arrays, metrics, predictions (no timestamps, no timings)."""
    import zarr

    from wsi_mil.store.bags import read_bag
    from wsi_mil.store.features import read_features
    from wsi_mil.store.scores import read_scores

    out: dict[str, Any] = {}
    for slide_id in slide_ids:
        out[f"bag/{slide_id}"] = read_bag(run / "bags" / f"{slide_id}.h5").coords
        features = read_features(run / "features" / ENCODER_DIR / f"{slide_id}.h5")
        out[f"features/{slide_id}"], out[f"feature_coords/{slide_id}"] = features.features, features.coords
        for head in HEADS:
            scores = read_scores(run / "scores" / head / f"{slide_id}.h5")
            out[f"scores/{head}/{slide_id}/coords"] = scores.coords
            out[f"scores/{head}/{slide_id}/probs"] = scores.attrs["probs"]
            out.update({f"scores/{head}/{slide_id}/{name}": values for name, values in scores.maps.items()})
            group = zarr.open_group(str(run / "heatmaps" / head / slide_id / "attention_pct.ome.zarr"), mode="r")
            out[f"heatmap/{head}/{slide_id}"] = np.asarray(group["0"][...])
    for head in HEADS:
        model = run / "models" / head
        out[f"metrics/{head}"] = read_csv(model / "metrics.csv")
        for fold in (0, 1):
            metrics = json.loads((model / f"fold_{fold}" / "metrics.json").read_text())
            out[f"fold/{head}/{fold}/metrics"] = _strip_seconds(metrics)
            out[f"fold/{head}/{fold}/predictions"] = read_csv(model / f"fold_{fold}" / "predictions.csv")
        out[f"explanations/{head}"] = read_csv(run / "explanations" / head / "explanations.csv")
        out[f"faithfulness/{head}"] = read_csv(run / "explanations" / head / "faithfulness_per_slide.csv")
    return out


def test_killed_during_extraction_resumes_to_the_same_outputs(reference: Reference, tmp_path: Path) -> None:
    """The reference's command, but with a Dask worker process (the default is one per core):
    the kill takes the workers with it, and how the work is spread changes no number."""
    ids = list(reference.cohort.slide_ids)
    command = [*SETS, "--workers", "1", "--quiet"]
    for attempt in range(ATTEMPTS):
        run = tmp_path / f"attempt{attempt}"
        config = write_config(tmp_path / f"attempt{attempt}.yaml", reference.cohort, run)
        left = _kill_during_extraction(config, run, len(ids), *command)
        if left is not None:
            break
    else:
        pytest.fail(
            f"extraction was never caught in the middle in {ATTEMPTS} attempts (stderr: "
            f"{(tmp_path / f'attempt{ATTEMPTS - 1}.stderr').read_text()[-2000:]})"
        )
    assert 0 < left < len(ids)
    assert not (run / "models").exists()  # killed before training

    done = run_cli("run", str(config), *command, cwd=tmp_path)  # the same command again
    assert done.returncode == 0, done.stderr
    assert not [p for p in run.rglob("*") if ".partial-" in p.name]  # what the kill left was cleaned up

    expected, actual = _outputs(reference.run, ids), _outputs(run, ids)
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(actual[name], value, err_msg=name)
        else:
            assert actual[name] == value, name

    rows = manifest(run)
    assert {(r["stage"], r["slide_id"], r["bag_set"]) for r in rows} == {
        (r["stage"], r["slide_id"], r["bag_set"]) for r in manifest(reference.run)
    }
    extract = [r["status"] for r in rows if r["stage"] == "extract"]
    assert set(extract) <= {"done", "skipped"} and extract.count("skipped") >= left  # resumed, not redone
    expected_config = json.loads((reference.run / "run_config.json").read_text())
    expected_config["run"]["out"] = str(run.resolve())
    expected_config["parallel"]["workers"] = 1
    assert json.loads((run / "run_config.json").read_text()) == expected_config


# --- a changed config over an existing run folder ---------------------------------------


def _state(run: Path) -> dict[str, Any]:
    files = sorted(p for p in run.rglob("*") if p.is_file())
    return {p.relative_to(run).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in files}


def test_changed_settings_are_refused_before_any_work_unless_overwrite(
    cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mil.store.bags import read_bag
    from wsi_mil.store.features import read_features

    slides = tmp_path / "slides.csv"  # two slides are enough here
    slides.write_text("path\n" + "".join(f"{cohort.slides / s}.svs\n" for s in cohort.slide_ids[:2]))
    run = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", cohort, run)
    config.write_text(
        config.read_text().replace(f"slides: {cohort.slides}", f"slides: {slides}") + "  stages: [tile, extract]\n"
    )
    assert main(["run", str(config), "--quiet"]) == 0
    before = _state(run)

    capsys.readouterr()
    assert main(["run", str(config), "--set", "tiling.patch_size=256", "--quiet"]) == 2
    error = capsys.readouterr().err
    for fragment in (
        str(config),
        "tiling.patch_size: 128 -> 256",
        "bags/",
        "qc/",
        "features/",
        "--overwrite",
        "run.out",
    ):
        assert fragment in error, (fragment, error)
    assert _state(run) == before  # refused before any work: not even run_config.json changed

    # How the work is done (batch, threads, workers, device, stages, heads) may change; so may the
    # settings of stages without outputs yet (no models here).
    assert (
        main(
            [
                "run",
                str(config),
                "--set",
                "extract.batch_size=4",
                "--set",
                "extract.threads=2",
                "--workers",
                "0",
                "--set",
                "train.epochs=7",
                "--set",
                "run.models=[ilam]",
                "--quiet",
            ]
        )
        == 0
    )
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["extract"]["batch_size"] == 4 and saved["train"]["epochs"] == 7 and saved["run"]["models"] == ["ilam"]
    assert {row["status"] for row in manifest(run)} == {"skipped"}

    assert main(["run", str(config), "--set", "tiling.patch_size=256", "--overwrite", "--quiet"]) == 0
    assert json.loads((run / "run_config.json").read_text())["tiling"]["patch_size"] == 256
    for slide_id in cohort.slide_ids[:2]:
        bag = read_bag(run / "bags" / f"{slide_id}.h5")
        assert bag.attrs["patch_size"] == 256
        features = read_features(run / "features" / ENCODER_DIR / f"{slide_id}.h5")
        np.testing.assert_array_equal(features.coords, bag.coords)
    assert main(["run", str(config), "--set", "tiling.patch_size=256", "--quiet"]) == 0  # now the saved settings


def test_bags_of_single_commands_are_checked_against_their_tiling_settings(
    cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder tiled by ``wsi-mil tile`` has no run_config.json; its bags record their settings."""
    slides, run = tmp_path / "slides.csv", tmp_path / "run"
    slides.write_text("path\n" + "".join(f"{cohort.slides / s}.svs\n" for s in cohort.slide_ids[:2]))
    assert (
        main(
            [
                "tile",
                str(slides),
                "--out",
                str(run),
                "--patch-size",
                "256",
                "--workers",
                "0",
                "--quiet",
                "--set",
                "tissue.remove_pen=false",
            ]
        )
        == 0
    )
    config = write_config(tmp_path / "cfg.yaml", cohort, run)
    text = config.read_text().replace(f"slides: {cohort.slides}", f"slides: {slides}")
    config.write_text(text + "  stages: [tile]\n")
    capsys.readouterr()
    assert main(["run", str(config), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "tiling.patch_size: 256 -> 128" in error and f"{run / 'bags'}/{cohort.slide_ids[0]}.h5" in error
    assert not (run / "run_config.json").exists()
    assert main(["run", str(config), "--set", "tiling.patch_size=256", "--quiet"]) == 0
    assert {row["status"] for row in manifest(run) if row["stage"] == "tile"} == {"skipped"}
    assert json.loads((run / "run_config.json").read_text())["tiling"]["patch_size"] == 256


def _config(out: Path, /, **sections: dict[str, Any]) -> Any:
    """A config writing into ``out``, with ``sections`` changed."""
    from wsi_mil.config import config_from_dict

    data: dict[str, dict[str, Any]] = {"extract": {"encoder": ENCODER, "weights": "random"}, "run": {"out": str(out)}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_from_dict(data)


def _touch(run: Path, *names: str) -> None:
    for name in names:
        (run / name).mkdir(parents=True, exist_ok=True)
        (run / name / "x.h5").write_bytes(b"x")


HEAD_OUTPUTS = ("models/abmil", "scores/abmil", "heatmaps/abmil", "explanations/abmil")
ALL_OUTPUTS = ("bags", f"features/{ENCODER_DIR}", *HEAD_OUTPUTS)


@pytest.mark.parametrize(
    ("change", "outputs", "stale"),
    [
        (
            {
                "parallel": {"workers": 3},
                "extract": {"device": "cuda", "batch_size": 4, "num_workers": 2, "threads": 1},
                "train": {"device": "cuda", "read_threads": 2},
                "heatmap": {"formats": ["png"], "cam_device": "cuda"},
                "run": {"stages": ["train"], "masks": "elsewhere"},
            },
            ALL_OUTPUTS,
            [],
        ),
        ({"train": {"epochs": 7}}, ("bags", f"features/{ENCODER_DIR}"), []),
        ({"train": {"epochs": 7}}, ALL_OUTPUTS, list(HEAD_OUTPUTS)),
        ({"heatmap": {"cmap": "viridis"}}, ALL_OUTPUTS, ["heatmaps/abmil", "explanations/abmil"]),
        ({"extract": {"encoder": "resnet18"}}, ("bags", f"features/{ENCODER_DIR}"), []),
        ({"extract": {"encoder": "resnet18"}}, ("bags", f"features/{ENCODER_DIR}", "models/abmil"), ["models"]),
        ({"extract": {"weights": "imagenet"}}, ("bags", f"features/{ENCODER_DIR}"), [f"features/{ENCODER_DIR}"]),
        ({"tissue": {"median_size": 7}}, ("bags", "qc", "features/other"), ["bags", "qc", "features"]),
        ({"run": {"labels": "other.csv"}}, ("bags", "models/abmil"), ["models/abmil"]),
        ({"train": {"model": "ilam"}}, ("bags", "models/abmil"), []),  # another head, another folder
        ({"train": {"model": "ilam", "name": "abmil"}}, ("bags", "models/abmil"), ["models/abmil"]),
    ],
)
def test_which_changes_make_which_outputs_stale(
    tmp_path: Path, change: dict[str, dict[str, Any]], outputs: tuple[str, ...], stale: list[str]
) -> None:
    from wsi_mil.config import config_to_json
    from wsi_mil.errors import ConfigError
    from wsi_mil.pipeline_resume import stale_outputs
    from wsi_mil.run_layout import RUN_CONFIG

    run = tmp_path / "run"
    _touch(run, *outputs)
    (run / RUN_CONFIG).write_text(config_to_json(_config(run)))
    config = _config(run, **change)
    assert stale_outputs(config, overwrite=True) == [run / name for name in stale]
    if stale:
        with pytest.raises(ConfigError) as info:
            stale_outputs(config, where="cfg.yaml")
        for key, values in change.items():
            assert any(f"{key}.{name}:" in str(info.value) for name in values)
        for name in stale:  # the message's advice: delete them, and a rerun may go on
            shutil.rmtree(run / name)
    assert stale_outputs(config) == []


def test_heads_of_run_models_ignore_train_model_and_old_files_count_defaults(tmp_path: Path) -> None:
    from wsi_mil.config import config_to_dict
    from wsi_mil.errors import ConfigError
    from wsi_mil.pipeline_resume import stale_outputs
    from wsi_mil.run_layout import RUN_CONFIG

    run = tmp_path / "run"
    _touch(run, *ALL_OUTPUTS)
    saved = config_to_dict(_config(run, run={"models": ["abmil"]}))
    del saved["train"]["instance_k"]  # a key an older version did not write: its default is assumed
    saved["train"]["retired_option"] = 1  # a key this version does not know: ignored
    (run / RUN_CONFIG).write_text(json.dumps(saved))
    assert stale_outputs(_config(run, run={"models": ["abmil"]}, train={"model": "ilam", "name": "x"})) == []
    with pytest.raises(ConfigError, match="train.instance_k: 8 -> 4"):
        stale_outputs(_config(run, run={"models": ["abmil"]}, train={"instance_k": 4}))
    (run / RUN_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        stale_outputs(_config(run))
    assert stale_outputs(_config(run), overwrite=True)[0] == run / "bags"


def test_demo_rerun_with_other_settings_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_mil import demo
    from wsi_mil.errors import ConfigError

    spec = CohortSpec(n_slides=2, width=1024, height=768, seed=1)
    result = demo.run_demo(out=tmp_path / "demo", spec=spec, stages=("tile",), workers=0, progress=False)
    assert result.pipeline.failed == 0 and len(result.pipeline.records["tile"]) == 2
    monkeypatch.setitem(demo.DEMO_SETTINGS, "tiling", {**demo.DEMO_SETTINGS["tiling"], "patch_size": 224})
    with pytest.raises(ConfigError) as info:
        demo.run_demo(out=tmp_path / "demo", spec=spec, stages=("tile",), workers=0, progress=False)
    assert "demo: " in str(info.value) and "tiling.patch_size: 256 -> 224" in str(info.value)
    assert "--out" in str(info.value)


# --- pipelines/run_all.sh -----------------------------------------------------------------

RUN_ALL = REPO / "pipelines" / "run_all.sh"


def test_run_all_sh_parses_and_prints_its_usage() -> None:
    assert subprocess.run(["bash", "-n", str(RUN_ALL)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(RUN_ALL)], capture_output=True, text=True)
    assert usage.returncode == 2 and "Usage:" in usage.stderr and "CONFIG SLIDES RUN_DIR LABELS HEAD" in usage.stderr


@pytest.mark.slow  # five interpreters each import torch: ~30 s here
def test_run_all_sh_runs_every_staged_script(reference: Reference, tmp_path: Path) -> None:
    """The staged scripts one after the other on the same cohort and config: every stage's
    outputs, and the same features as ``wsi-mil run``."""
    from wsi_mil.store.features import read_features

    run, cohort = tmp_path / "run", reference.cohort
    arguments = [reference.config, cohort.slides, run, cohort.labels, "abmil", cohort.masks]
    done = subprocess.run(
        ["bash", str(RUN_ALL), *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**environment(), "PYTHON": sys.executable},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| feature set |" in done.stderr  # 03_train logs the summary table
    for slide_id in cohort.slide_ids:
        features = read_features(run / "features" / ENCODER_DIR / f"{slide_id}.h5")
        expected = read_features(reference.run / "features" / ENCODER_DIR / f"{slide_id}.h5")
        np.testing.assert_array_equal(features.features, expected.features)
        assert (run / "scores" / "abmil" / f"{slide_id}.h5").is_file()
        assert (run / "heatmaps" / "abmil" / slide_id / "attention_pct.ome.zarr").is_dir()
    metrics = read_csv(run / "models" / "abmil" / "metrics.csv")
    assert [row["fold"] for row in metrics] == ["0", "1", "mean", "std", "pooled"]
    metrics = json.loads((run / "models" / "abmil" / "fold_0" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3  # the YAML's (no --set here)
    assert "attention_pct" in (run / "explanations" / "abmil" / "explanations.md").read_text()
    assert not (run / "models" / "ilam").exists()  # one head: HEAD


def test_heads_train_on_the_configured_encoder_only(
    cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an encoder change (--overwrite), the run folder holds two encoders' features; the
    head trains on extract.encoder's only. Without run.models, train.name names the head folder."""
    run = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", cohort, run)
    pairs = (
        "run.models=[]",
        "train.model=ilam",
        "train.name=mine",
        "train.epochs=1",
        "run.stages=[tile,extract,train,predict]",
    )
    sets = [*(part for pair in pairs for part in ("--set", pair)), "--quiet"]
    assert main(["run", str(config), *sets]) == 0
    assert json.loads((run / "models" / "mine" / "train_config.json").read_text())["model"] == "ilam"
    assert sorted(p.stem for p in (run / "scores" / "mine").glob("*.h5")) == sorted(cohort.slide_ids)

    other = ["--set", "extract.encoder=timm:test_efficientnet"]
    capsys.readouterr()
    assert main(["run", str(config), *sets, *other]) == 2
    assert 'extract.encoder: "timm:test_resnet" -> "timm:test_efficientnet"' in capsys.readouterr().err
    assert main(["run", str(config), *sets, *other, "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "features").iterdir()) == ["timm-test_efficientnet", ENCODER_DIR]
    record = json.loads((run / "models" / "mine" / "train_config.json").read_text())
    assert [entry["root"] for entry in record["sets"]] == [str((run / "features" / "timm-test_efficientnet").resolve())]
    assert sorted(p.stem for p in (run / "scores" / "mine").glob("*.h5")) == sorted(cohort.slide_ids)
