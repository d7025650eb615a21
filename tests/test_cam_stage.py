"""CAMs never fail a slide (issue 12 item 5), through the real CLI: a checkpoint encoder gets
its checkpoint in the CAM stage, a transformer gets integrated gradients only with a note,
and a CAM that cannot be made is a note in a ``done`` record, never a failed slide.

Plumbing only: timm's tiny ``test_resnet`` and ``test_vit`` with random weights saved as
a local checkpoint file (the way UNI or own weights arrive), two folds, one epoch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("captum")

from tests.cli_runs import train_and_predict  # noqa: E402
from wsi_mil.cli import main  # noqa: E402
from wsi_mil.synthetic import Region, write_synthetic_slide  # noqa: E402

pytestmark = pytest.mark.slow  # three small runs through every stage

QUIET = ["--quiet", "--workers", "0"]
CAM_SETS = [
    "--set",
    "heatmap.cam_top_k=2",
    "--set",
    "heatmap.cam_methods=[gradcam,integrated_gradients]",
    "--set",
    "heatmap.cam_ig_steps=2",
    "--set",
    "heatmap.cam_device=cpu",
]


def _run(root: Path, arch: str) -> tuple[Path, Path]:
    """A tiled, extracted (with a checkpoint file), trained and scored run; (run, checkpoint)."""
    slides, run = root / "slides", root / "run"
    for index in range(4):
        write_synthetic_slide(
            slides / f"case{index}.svs",
            width=1536,
            height=1024,
            mpp=0.5,
            regions=[Region(256 + 256 * (index % 2), 256, 1280, 768)],
            downsamples=(1, 4),
        )
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    torch.manual_seed(0)
    checkpoint = root / f"{arch}.pth"
    torch.save(timm.create_model(arch, pretrained=False, num_classes=0).state_dict(), checkpoint)
    assert main(["tile", str(slides), "--out", str(run), "--set", "tissue.remove_pen=false", *QUIET]) == 0
    assert (
        main(
            [
                "extract",
                str(run),
                "--encoder",
                f"timm:{arch}",
                "--checkpoint-path",
                str(checkpoint),
                "--device",
                "cpu",
                "--batch-size",
                "8",
                *QUIET,
            ]
        )
        == 0
    )
    train_and_predict(run, labels)
    return run, checkpoint


def _heatmap_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "manifest.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["stage"] == "heatmap"]
    assert len(rows) == 4
    return rows


def _heatmap(run: Path, *extra: str) -> int:
    return main(["heatmap", str(run), "--formats", "tiff", "--maps", "attention_pct", *CAM_SETS, *QUIET, *extra])


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _run(tmp_path_factory.mktemp("cnn"), "test_resnet")


def test_missing_checkpoint_is_a_note_not_a_failed_slide(cnn_run: tuple[Path, Path]) -> None:
    run, _ = cnn_run
    assert _heatmap(run) == 0  # the slide's maps are written: the run succeeds
    for row in _heatmap_rows(run):
        assert row["status"] == "done", row
        assert "no CAMs" in row["note"] and "extract.checkpoint_path" in row["note"], row["note"]
        out = run / "heatmaps" / "abmil" / row["slide_id"]
        assert (out / "attention_pct.tiff").exists() and not (out / "cams.h5").exists()


def test_another_checkpoint_is_refused_in_a_note(cnn_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = cnn_run
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), other)
    assert _heatmap(run, "--set", f"extract.checkpoint_path={other}", "--overwrite") == 0
    for row in _heatmap_rows(run):
        assert row["status"] == "done" and "is not the checkpoint that made the features" in row["note"], row


def test_checkpoint_encoder_gets_its_checkpoint_and_context(cnn_run: tuple[Path, Path]) -> None:
    from wsi_mil.explain.cams_file import read_cams

    run, checkpoint = cnn_run
    assert _heatmap(run, "--set", f"extract.checkpoint_path={checkpoint}", "--overwrite") == 0
    for row in _heatmap_rows(run):
        assert row["status"] == "done" and row["note"] == "", row
        cams = read_cams(run / "heatmaps" / "abmil" / row["slide_id"] / "cams.h5")
        assert set(cams.maps) == {"gradcam", "integrated_gradients"}
        assert cams.maps["gradcam"].shape[1:] == cams.images.shape[1:3]  # cut to the patch
        assert cams.attrs["context_px"] > 0  # read with slide context around each patch


def test_transformer_gets_integrated_gradients_only_with_a_note(tmp_path: Path) -> None:
    from wsi_mil.explain.cams_file import read_cams

    run, checkpoint = _run(tmp_path, "test_vit")
    assert _heatmap(run, "--set", f"extract.checkpoint_path={checkpoint}") == 0
    for row in _heatmap_rows(run):
        assert row["status"] == "done", row
        assert "gradcam skipped" in row["note"] and "integrated_gradients only" in row["note"], row["note"]
        out = run / "heatmaps" / "abmil" / row["slide_id"]
        cams = read_cams(out / "cams.h5")
        assert set(cams.maps) == {"integrated_gradients"} and cams.attrs["context_px"] == 0
        assert (out / "cam_integrated_gradients.tiff").exists()
