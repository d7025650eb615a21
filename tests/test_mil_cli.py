"""``wsi-mil train`` / ``wsi-mil predict`` end to end: outputs, resume, several feature sets, the scores contract."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from wsi_mil.cli import main  # noqa: E402
from wsi_mil.mil.synthetic import make_planted_bags, write_planted_bags  # noqa: E402
from wsi_mil.store import open_bag_writer  # noqa: E402
from wsi_mil.store import scores as S  # noqa: E402
from wsi_mil.store.features import read_features  # noqa: E402

SETS = ("0.5mpp", "1mpp")
QUICK = ["--set", "train.min_epochs=1", "--set", "train.hidden_dim=16", "--set", "train.attention_dim=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with two bag sets of one encoder, a bag per slide, string labels with patients; ilam trained."""
    run = tmp_path_factory.mktemp("run")
    bags = make_planted_bags(16, n_instances=(8, 16), dim=8, seed=1)
    for bag_set in SETS:
        write_planted_bags(bags, run / "features" / "toy" / bag_set)
        for bag in bags[:2]:  # geometry the feature files lack comes from the bag
            with open_bag_writer(run / "bags" / bag_set / f"{bag.slide_id}.h5") as writer:
                writer.write_coords(
                    bag.coords,
                    {
                        "patch_size": 256,
                        "patch_level": 0,
                        "slide_mpp": 0.5,
                        "target_mpp": float(bag_set.rstrip("mp")),
                        "slide_path": "/x.svs",
                        "level_dim": [4096, 4096],
                    },
                )
    lines = ["slide_id,label,patient_id"]
    for bag in bags[:14]:  # bags 14 and 15 stay unlabelled: "new" slides for predict
        lines.append(f"{bag.slide_id},{'tumor' if bag.label else 'normal'},p{int(bag.slide_id[-2:]) // 2}")
    (run / "labels.csv").write_text("\n".join(lines) + "\n")
    argv = [
        "train",
        str(run),
        "--labels",
        str(run / "labels.csv"),
        "--model",
        "ilam",
        "--name",
        "il",
        "--folds",
        "3",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--set",
        "train.transformer=true",
        *QUICK,
        "--quiet",
    ]
    assert main(argv) == 0
    weights = run / "models" / "il" / "1mpp" / "fold_2" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(argv) == 0  # resume: every fold is complete, nothing retrained
    assert weights.stat().st_mtime_ns == before
    return run


def test_train_writes_folds_summary_and_plots_per_feature_set(trained: Path) -> None:
    model_dir = trained / "models" / "il"
    for bag_set in SETS:
        for fold in range(3):
            fold_dir = model_dir / bag_set / f"fold_{fold}"
            assert {p.name for p in fold_dir.iterdir()} == {
                "model.safetensors",
                "config.json",
                "metrics.json",
                "predictions.csv",
            }
        assert (model_dir / bag_set / "roc.png").read_bytes()[:4] == b"\x89PNG"
        assert (model_dir / bag_set / "confusion.png").exists()
        with (model_dir / bag_set / "splits.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 14
        folds_of_patient: dict[str, set] = {}
        for row in rows:
            folds_of_patient.setdefault(row["patient_id"], set()).add(row["test_fold"])
        assert all(len(f) == 1 for f in folds_of_patient.values()), "a patient in two test folds"
    with (model_dir / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["fold"] for r in table] == ["0", "1", "2", "mean", "std", "pooled"] * 2
    assert {r["feature_set"] for r in table} == set(SETS)
    summary = (model_dir / "summary.md").read_text()
    assert "0.5mpp" in summary and "1mpp" in summary and "±" in summary and "0 = `normal`, 1 = `tumor`" in summary
    assert "2 slide(s) with features but no label" in summary
    config = json.loads((model_dir / "0.5mpp" / "fold_0" / "config.json").read_text())
    assert config["classes"] == ["normal", "tumor"] and config["head_options"]["transformer"] is True


def test_predict_writes_the_scores_contract(trained: Path) -> None:
    model_dir = trained / "models" / "il"
    assert main(["predict", str(trained), "--model-dir", str(model_dir), "--device", "cpu", "--quiet"]) == 0
    splits = {r["slide_id"]: int(r["test_fold"]) for r in csv.DictReader((model_dir / "0.5mpp" / "splits.csv").open())}
    for slide_id, fold in [*list(splits.items())[:3], ("bag_0014", None)]:
        scores = S.read_scores(trained / "scores" / "il" / "0.5mpp" / f"{slide_id}.h5")
        features = read_features(trained / "features" / "toy" / "0.5mpp" / f"{slide_id}.h5")
        n = len(features.features)
        assert scores.coords.dtype == np.int64 and np.array_equal(scores.coords, features.coords)
        assert set(scores.maps) == {
            S.ATTENTION_RAW,
            S.ATTENTION,
            S.ATTENTION_PCT,
            S.INSTANCE_LOGITS,
            S.CONTRIBUTION,
            S.RELEVANCE,
            S.MANIFOLD,
        }
        assert scores.maps[S.MANIFOLD].min() == 0.0 and scores.maps[S.MANIFOLD].max() == 1.0
        assert all(v.dtype == np.float32 and len(v) == n for v in scores.maps.values())
        assert scores.maps[S.INSTANCE_LOGITS].shape == scores.maps[S.CONTRIBUTION].shape == (n, 2)
        assert scores.maps[S.ATTENTION].sum() == pytest.approx(1.0, abs=1e-5)
        assert scores.maps[S.ATTENTION_PCT].min() == 0.0 and scores.maps[S.ATTENTION_PCT].max() == 1.0
        assert np.argmax(scores.maps[S.ATTENTION_RAW]) == np.argmax(scores.maps[S.ATTENTION_PCT])
        assert scores.attrs["classes"] == ["normal", "tumor"] and scores.attrs["model"] == "ilam"
        assert scores.attrs["format_version"] == "1.0" and scores.attrs["slide_id"] == slide_id
        assert scores.attrs["probs"].shape == (2,) and scores.attrs["pred"] == int(np.argmax(scores.attrs["probs"]))
        assert scores.coords_attrs["patch_size_level0"] == 256
        if fold is None:
            assert scores.attrs["fold_policy"] == "mean" and scores.attrs["folds"] == [0, 1, 2]
        else:
            assert scores.attrs["fold_policy"] == "out_of_fold" and scores.attrs["folds"] == [fold]
            np.testing.assert_allclose(
                scores.maps[S.CONTRIBUTION],
                scores.maps[S.ATTENTION][:, None] * scores.maps[S.INSTANCE_LOGITS],
                rtol=1e-5,
                atol=1e-7,
            )
            prediction = {
                r["slide_id"]: r
                for r in csv.DictReader((model_dir / "0.5mpp" / f"fold_{fold}" / "predictions.csv").open())
            }
            assert float(prediction[slide_id]["prob_tumor"]) == pytest.approx(float(scores.attrs["probs"][1]), abs=1e-5)
    with_bag = S.read_scores(trained / "scores" / "il" / "1mpp" / "bag_0000.h5")
    assert with_bag.coords_attrs["slide_mpp"] == 0.5 and with_bag.coords_attrs["target_mpp"] == 1.0
    assert with_bag.coords_attrs["patch_size"] == 256 and with_bag.coords_attrs["slide_path"] == "/x.svs"


def test_predict_subprocess_mean_over_folds(trained: Path) -> None:
    wsi_mil = Path(sys.executable).with_name("wsi-mil")
    done = subprocess.run(
        [
            str(wsi_mil),
            "predict",
            str(trained),
            "--model-dir",
            str(trained / "models" / "il"),
            "--all-folds",
            "--slides",
            "bag_0003",
            "--overwrite",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    scores = S.read_scores(trained / "scores" / "il" / "0.5mpp" / "bag_0003.h5")
    assert scores.attrs["fold_policy"] == "mean" and scores.attrs["folds"] == [0, 1, 2]
    assert "prediction: 2 done" in done.stderr


def test_abmil_scores_have_no_contribution_and_csv_split_column(tmp_path: Path) -> None:
    bags = make_planted_bags(12, n_instances=(6, 10), dim=8, seed=2)
    write_planted_bags(bags, tmp_path / "features" / "toy")
    roles = ["train"] * 8 + ["test"] * 4
    rows = [f"{b.slide_id},{b.label},{role}" for b, role in zip(bags, roles, strict=True)]
    (tmp_path / "labels.csv").write_text("slide_id,label,split\n" + "\n".join(rows) + "\n")
    assert (
        main(["train", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--epochs", "2", *QUICK, "--quiet"])
        == 0
    )
    assert [p.name for p in sorted((tmp_path / "models" / "abmil").glob("fold_*"))] == ["fold_0"]
    assert main(["predict", str(tmp_path), "--model-dir", str(tmp_path / "models" / "abmil"), "--quiet"]) == 0
    scores = S.read_scores(tmp_path / "scores" / "abmil" / "bag_0000.h5")
    assert S.CONTRIBUTION not in scores.maps and S.RELEVANCE not in scores.maps
    assert scores.attrs["fold_policy"] == "single_model" and scores.attrs["in_training"] == 1


def test_a_truncated_score_file_is_redone_not_skipped(trained: Path) -> None:
    argv = ["predict", str(trained), "--model-dir", str(trained / "models" / "il"), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    path = trained / "scores" / "il" / "0.5mpp" / "bag_0003.h5"
    assert S.scores_problem(path) is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert S.scores_problem(path) is not None
    assert main(argv) == 0
    with (trained / "manifest.csv").open(newline="") as handle:
        [row] = [
            r
            for r in csv.DictReader(handle)
            if r["stage"] == "predict" and r["slide_id"] == "bag_0003" and r["bag_set"] == "il/0.5mpp"
        ]
    assert row["status"] == "done" and row["note"].startswith("redone: the previous score file was"), row
    assert S.scores_problem(path) is None and len(S.read_scores(path).coords) == int(row["n_patches"])
