"""RunLayout: the run folder's paths, the one bag lookup, and no path joined by hand elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

from wsi_mil.run_layout import RunLayout, encoder_dir_name

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_mil"
#: Folder and file names of the run folder: only run_layout.py may join them onto a path.
RUN_NAMES = {
    "bags",
    "qc",
    "features",
    "clam",
    "models",
    "scores",
    "heatmaps",
    "explanations",
    "manifest.csv",
    "run_config.json",
    "tiling_config.json",
    "train_config.json",
    "heatmap_config.json",
    ".wsi-mil.lock",
}


def test_paths_are_the_existing_on_disk_layout(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path))  # str or Path
    assert layout.root == tmp_path
    assert layout.manifest == tmp_path / "manifest.csv"
    assert layout.run_config == tmp_path / "run_config.json"
    assert layout.tiling_config == tmp_path / "tiling_config.json"
    assert layout.lock == tmp_path / ".wsi-mil.lock"
    assert layout.bag_dir() == layout.bag_dir("-") == tmp_path / "bags"
    assert layout.bag_dir("0.5mpp") == tmp_path / "bags" / "0.5mpp"
    assert layout.qc_dir("20x") == tmp_path / "qc" / "20x"
    assert layout.features_dir("timm:hf-hub/org/x") == tmp_path / "features" / "timm-hf-hub-org-x"
    assert encoder_dir_name("timm:hf-hub/org/x") == "timm-hf-hub-org-x"
    assert layout.features_dir("resnet50_trunc", "0.5mpp") == tmp_path / "features" / "resnet50_trunc" / "0.5mpp"
    assert layout.feature_set_dir("resnet50_trunc/0.5mpp") == tmp_path / "features" / "resnet50_trunc" / "0.5mpp"
    assert layout.clam_dir("resnet50_trunc", "-") == tmp_path / "clam" / "resnet50_trunc"
    assert layout.model_dir("abmil") == tmp_path / "models" / "abmil"
    assert layout.model_dir("abmil", "0.5mpp") == tmp_path / "models" / "abmil" / "0.5mpp"
    assert layout.train_config("abmil") == tmp_path / "models" / "abmil" / "train_config.json"
    assert layout.scores_file("abmil", "s1") == tmp_path / "scores" / "abmil" / "s1.h5"
    assert layout.scores_file("abmil", "s1", Path("1mpp")) == tmp_path / "scores" / "abmil" / "1mpp" / "s1.h5"
    assert layout.heatmap_dir("abmil", "s1") == tmp_path / "heatmaps" / "abmil" / "s1"
    assert layout.heatmap_dir("abmil", "s1", Path(".")) == tmp_path / "heatmaps" / "abmil" / "s1"
    assert layout.heatmap_dir("abmil", "s1", "1mpp") == tmp_path / "heatmaps" / "abmil" / "1mpp" / "s1"
    assert layout.explanations_dir("ilam") == tmp_path / "explanations" / "ilam"
    assert layout.head_outputs("ilam")["heatmap"] == tmp_path / "heatmaps" / "ilam"
    assert not any(tmp_path.iterdir())  # asking touches nothing


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_one_bag_lookup_prefers_the_set_then_the_root_then_any_set(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert layout.find_bags() == [] and layout.find_bag("a") is None
    root_a = _touch(tmp_path / "bags" / "a.h5")
    set_a = _touch(tmp_path / "bags" / "1mpp" / "a.zarr")
    only_b = _touch(tmp_path / "bags" / "2mpp" / "b.h5")
    _touch(tmp_path / "bags" / "2mpp" / ".c.h5")  # a hidden temporary output: not a bag
    _touch(tmp_path / "bags" / "notes.txt")
    assert layout.find_bags() == [("", root_a), ("1mpp", set_a), ("2mpp", only_b)]
    assert layout.find_bag("a", "1mpp") == set_a
    assert layout.find_bag("a", "2mpp") == root_a  # not in its set: the run's own bag
    assert layout.find_bag("b", "1mpp") is None  # another resolution's bag only when asked for
    assert layout.find_bag("b", "1mpp", other_sets=True) == only_b


def test_scores_are_listed_per_head_and_set(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert layout.scored_heads() == [] and list(layout.find_scores()) == []
    one = _touch(layout.scores_file("abmil", "s1"))
    two = _touch(layout.scores_file("ilam", "s2", "1mpp"))
    _touch(layout.scores_dir("ilam", "1mpp") / ".s3.h5")
    assert layout.scored_heads() == ["abmil", "ilam"]
    assert list(layout.find_scores()) == [("abmil", Path("."), one), ("ilam", Path("1mpp"), two)]
    assert list(layout.find_scores("ilam")) == [("ilam", Path("1mpp"), two)]


def test_relative_names_never_hold_an_absolute_path(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert layout.relative(tmp_path / "scores" / "abmil" / "s1.h5") == "scores/abmil/s1.h5"
    assert layout.relative(tmp_path.parent / "elsewhere" / "s1.h5") == "s1.h5"


def _hand_joined(path: Path) -> list[str]:
    """``x / "bags"``-style joins of a run-folder name (string constants on either side of ``/``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in RUN_NAMES:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: / {side.value!r}")
    return found


def test_no_module_joins_run_paths_by_hand() -> None:
    found = [
        hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "run_layout.py" for hit in _hand_joined(path)
    ]
    assert not found, "run-folder paths joined outside wsi_mil/run_layout.py:\n" + "\n".join(found)
