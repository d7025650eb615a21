"""A bad checkpoint is refused once, before the first slide, in extract and in heatmap (not once per slide)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from tests.cli_runs import train_and_predict  # noqa: E402
from wsi_mil.cli import main  # noqa: E402
from wsi_mil.synthetic import Region, write_synthetic_slide  # noqa: E402

QUIET = ["--quiet", "--workers", "0"]


class NotWeights:  # pickled code: weights_only loading refuses it
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiled slides (three bags would already give three copies of an error per slide)."""
    root = tmp_path_factory.mktemp("ckpt")
    slides, run = root / "slides", root / "run"
    for index in range(4):
        write_synthetic_slide(
            slides / f"case{index}.svs",
            width=1024,
            height=1024,
            mpp=0.5,
            regions=[Region(256, 256, 512, 512)],
            downsamples=(1,),
        )
    assert main(["tile", str(slides), "--out", str(run), "--patch-size", "128", *QUIET]) == 0
    return run


def _checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    paths = {name: folder / f"{name}.pth" for name in ("good", "other", "garbage", "pickled", "misfit")}
    torch.save(torchvision.models.resnet18().state_dict(), paths["good"])
    torch.save(torchvision.models.resnet18().state_dict(), paths["other"])  # another seed: another hash
    paths["garbage"].write_bytes(b"\x00not a checkpoint" * 64)
    torch.save({"model": NotWeights()}, paths["pickled"])
    torch.save({"conv.weight": torch.zeros(3, 3)}, paths["misfit"])
    return paths


def _errors_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("error:", "case"))]


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The error lines the CLI logged (failed slides and the command's own error)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "case"))]


def _extract_rows(run: Path) -> list[dict[str, str]]:
    if not (run / "manifest.csv").exists():
        return []
    with (run / "manifest.csv").open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["stage"] == "extract"]


@pytest.mark.parametrize("kind", ["garbage", "pickled", "misfit"])
def test_extract_refuses_a_bad_checkpoint_once_before_any_slide(
    run: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoints(tmp_path)[kind]
    status = main(["extract", str(run), "--encoder", "resnet18", "--checkpoint-path", str(checkpoint), *QUIET])
    errors = _errors(capsys)
    assert status == 2 and len(errors) == 1, errors
    assert str(checkpoint) in errors[0] and "checked once, before any slide" in errors[0]
    assert _extract_rows(run) == [] and not (run / "features").exists()


@pytest.mark.slow
def test_heatmap_checks_the_checkpoint_of_the_features_once_and_still_makes_the_maps(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _checkpoints(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    assert (
        main(
            [
                "extract",
                str(run),
                "--encoder",
                "resnet18",
                "--checkpoint-path",
                str(paths["good"]),
                "--batch-size",
                "16",
                *QUIET,
            ]
        )
        == 0
    )
    train_and_predict(run, labels)
    heatmap = [
        "heatmap",
        str(run),
        "--formats",
        "png",
        "--maps",
        "attention_pct",
        "--set",
        "heatmap.cam_top_k=1",
        "--set",
        "heatmap.cam_methods=[gradcam]",
        "--set",
        "heatmap.cam_device=cpu",
        *QUIET,
    ]
    for checkpoint, fragment in (
        (None, "give that file as extract.checkpoint_path"),
        (paths["other"], "not the checkpoint the features were made with"),
    ):
        capsys.readouterr()
        extra = ["--set", f"extract.checkpoint_path={checkpoint}"] if checkpoint else []
        assert main([*heatmap, *extra, "--overwrite"]) == 0  # the maps are made; CAMs are skipped, said once
        err = capsys.readouterr().err
        assert err.count(fragment) == 1 and "Traceback" not in err, err
        assert all("no CAMs" in line for line in _errors_in(err)), err  # each slide: done, with a note
        assert (run / "heatmaps" / "abmil" / "case0" / "attention_pct_overlay.png").exists() or any(
            (run / "heatmaps" / "abmil" / "case0").glob("*.png")
        )
        assert not (run / "heatmaps" / "abmil" / "case0" / "cams.h5").exists()
    assert main([*heatmap, "--set", f"extract.checkpoint_path={paths['good']}"]) == 0
    assert (run / "heatmaps" / "abmil" / "case0" / "cams.h5").exists()
