"""Bad input gives a clear error or a logged, documented handling; CLAM layouts are accepted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from wsi_mil.cli import main  # noqa: E402
from wsi_mil.config import Config, TrainConfig  # noqa: E402
from wsi_mil.errors import FeatureFormatError, LabelError  # noqa: E402
from wsi_mil.mil.data import find_feature_sets  # noqa: E402
from wsi_mil.mil.labels import read_labels  # noqa: E402
from wsi_mil.mil.metrics import compute_metrics  # noqa: E402
from wsi_mil.mil.run import train_run  # noqa: E402
from wsi_mil.mil.synthetic import make_planted_bags, write_planted_bags  # noqa: E402
from wsi_mil.store.features import write_features  # noqa: E402

TINY = Config(train=TrainConfig(folds=2, epochs=1, min_epochs=1, hidden_dim=8, attention_dim=4, device="cpu"))


def _run(tmp_path: Path, n: int = 8, dim: int = 6) -> tuple[Path, Path, list]:
    bags = make_planted_bags(n, n_instances=(4, 8), dim=dim, seed=0)
    labels = tmp_path / "labels.csv"
    write_planted_bags(bags, tmp_path / "features" / "enc", labels_csv=labels)
    return tmp_path, labels, bags


def test_empty_bags_and_unmatched_ids_are_reported_not_dropped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, labels, _ = _run(tmp_path, n=10)
    write_features(run / "features" / "enc" / "bag_0000.h5", np.zeros((0, 6), np.float32), np.zeros((0, 2)), {})
    write_features(run / "features" / "enc" / "stray.h5", np.ones((3, 6), np.float32), np.zeros((3, 2)), {})
    labels.write_text(labels.read_text() + "ghost_1,1\nghost_2,0\n")
    with caplog.at_level(logging.WARNING):
        train_run(run, labels, config=TINY)
    text = caplog.text
    assert "2 slide(s) labelled but without a feature file (left out): ghost_1, ghost_2" in text
    assert "1 slide(s) with features but no label (not used): stray" in text
    assert "empty bag(s) (N = 0) left out: bag_0000" in text
    summary = (run / "models" / "abmil" / "summary.md").read_text()
    assert "ghost_1" in summary and "stray" in summary and "N = 0" in summary
    assert "bag_0000" not in (run / "models" / "abmil" / "splits.csv").read_text()


def test_nan_features_name_the_file(tmp_path: Path) -> None:
    run, labels, bags = _run(tmp_path)
    features = bags[3].features.copy()
    features[1, 2] = np.nan
    write_features(run / "features" / "enc" / "bag_0003.h5", features, bags[3].coords, {})
    with pytest.raises(FeatureFormatError, match=r"bag_0003\.h5: 1 of \d+ feature rows hold NaN/inf.*re-extract"):
        train_run(run, labels, config=TINY)


def test_mismatched_feature_dims_name_the_odd_file(tmp_path: Path) -> None:
    run, labels, _ = _run(tmp_path)
    write_features(run / "features" / "enc" / "bag_0005.h5", np.ones((4, 9), np.float32), np.zeros((4, 2)), {})
    with pytest.raises(FeatureFormatError, match=r"6-d.*bag_0005\.h5 \(9-d\)"):
        train_run(run, labels, config=TINY)


def test_label_errors(tmp_path: Path) -> None:
    run, labels, bags = _run(tmp_path)
    single = tmp_path / "single.csv"
    single.write_text("slide_id,label\n" + "".join(f"{b.slide_id},tumor\n" for b in bags))
    with pytest.raises(LabelError, match="two or more classes"):
        train_run(run, single, config=TINY)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("slide_id,label\nx1,0\nx2,1\n")
    with pytest.raises(LabelError, match="none of its 2 slide ids.*has a feature file"):
        train_run(run, unknown, config=TINY)
    with pytest.raises(LabelError, match="needs at least 5 slide\\(s\\) per class.*Lower the fold count \\(--folds N"):
        train_run(run, labels, config=Config(train=TrainConfig(folds=5, epochs=1, device="cpu")))
    columns = tmp_path / "columns.csv"
    columns.write_text("id,class\na,1\n")
    with pytest.raises(LabelError, match="slide_id,label"):
        read_labels(columns)
    clash = tmp_path / "clash.csv"
    clash.write_text("slide_id,label\na,1\na,0\n")
    with pytest.raises(LabelError, match="line 3.*both"):
        read_labels(clash)


def test_cli_reports_errors_with_exit_status_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, labels, _ = _run(tmp_path)
    assert main(["train", str(run), "--labels", str(labels), "--folds", "9", "--quiet"]) == 2
    assert main(["train", str(run), "--labels", str(labels), "--model", "nope", "--quiet"]) == 2
    assert main(["predict", str(run), "--model-dir", str(run / "models" / "none"), "--quiet"]) == 2


def test_rerun_with_another_config_refuses_to_mix(tmp_path: Path) -> None:
    run, labels, _ = _run(tmp_path)
    train_run(run, labels, config=TINY)
    other = Config(train=TrainConfig(folds=2, epochs=2, min_epochs=1, hidden_dim=8, attention_dim=4, device="cpu"))
    with pytest.raises(LabelError, match="different config"):
        train_run(run, labels, config=other)
    train_run(run, labels, config=other, overwrite=True)


def test_undefined_auc_is_nan_not_a_number_that_looks_real() -> None:
    metrics = compute_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]))
    assert np.isnan(metrics["roc_auc"]) and metrics["accuracy"] == pytest.approx(2 / 3)
    multi = compute_metrics(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]])
    assert multi["roc_auc"] == pytest.approx(np.mean([1.0, 5 / 6, 0.75]))


def test_clam_layouts(tmp_path: Path) -> None:
    bags = make_planted_bags(8, n_instances=(4, 8), dim=6, seed=4)
    labels = tmp_path / "labels.csv"
    clam = tmp_path / "clam"
    write_planted_bags(bags, clam / "h5_files", labels_csv=labels)
    (clam / "pt_files").mkdir()
    for bag in bags:
        torch.save(torch.from_numpy(bag.features), clam / "pt_files" / f"{bag.slide_id}.pt")
    (feature_set,) = find_feature_sets([clam])
    assert feature_set.files["bag_0000"].suffix == ".h5"
    pt_only = tmp_path / "pt_only"
    (pt_only / "pt_files").mkdir(parents=True)
    for bag in bags:
        torch.save(torch.from_numpy(bag.features), pt_only / "pt_files" / f"{bag.slide_id}.pt")
    (feature_set,) = find_feature_sets([pt_only])
    assert feature_set.files["bag_0001"].suffix == ".pt" and not feature_set.coords_files
    for folder in (clam, pt_only):
        assert (
            main(
                [
                    "train",
                    str(tmp_path / "run"),
                    "--labels",
                    str(labels),
                    "--features",
                    str(folder),
                    "--folds",
                    "2",
                    "--epochs",
                    "1",
                    "--name",
                    folder.name,
                    "--device",
                    "cpu",
                    "--quiet",
                ]
            )
            == 0
        )
        assert (tmp_path / "run" / "models" / folder.name / "fold_1" / "model.safetensors").exists()


def test_same_named_feature_folders_of_several_runs_stay_apart(tmp_path: Path) -> None:
    """Two runs' ``features/enc`` folders passed together: one set each, named by the part
    of their paths that differs, never merged or overwritten; the same folder twice is an error."""
    bags = make_planted_bags(6, n_instances=(4, 8), dim=6, seed=0)
    folders = [tmp_path / run / "features" / "enc" for run in ("run40x", "run100x")]
    for folder in folders:
        write_planted_bags(bags, folder)
    sets = find_feature_sets(folders)
    assert [s.key for s in sets] == ["run40x-features-enc", "run100x-features-enc"]
    assert [s.root for s in sets] == folders
    with pytest.raises(FeatureFormatError, match="the same feature folder is given twice"):
        find_feature_sets([folders[0], folders[0]])
