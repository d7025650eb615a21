"""Labels and the fold plan are validated before any tiling; their errors name the file, the lines and the option."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wsi_mil.cli import main
from wsi_mil.errors import LabelError
from wsi_mil.mil.labels import read_labels
from wsi_mil.mil.splits import check_fold_plan
from wsi_mil.synthetic import Region, write_synthetic_slide

IDS = [f"s{i}" for i in range(10)]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for name in IDS:
        write_synthetic_slide(
            folder / f"{name}.svs", width=512, height=512, mpp=0.5, regions=[Region(0, 0, 512, 512)], downsamples=(1,)
        )
    return folder


def _labels(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    path.write_bytes(("slide_id,label\n" + "".join(f"{s},{label}\n" for s, label in rows)).encode(encoding))
    return path


def _run(tmp_path: Path, slides: Path, labels: Path, *extra: str) -> tuple[int, float]:
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"parallel: {{workers: 0}}\nrun:\n  slides: {slides}\n  out: {tmp_path / 'run'}\n  labels: {labels}\n"
    )
    started = time.perf_counter()
    status = main(["run", str(config), "--quiet", *extra])
    return status, time.perf_counter() - started


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        ("NaN", "1 row(s) with the label 'NaN' (line(s) 4)"),
        ("", "1 row(s) with an empty label (line(s) 4)"),
        (
            "Tumor",
            "differ only in case or spaces would become separate classes: 'Tumor' (1 rows, first line 4), "
            "'tumor' (4 rows, first line 2)",
        ),
    ],
)
def test_missing_and_case_variant_labels_are_named(tmp_path: Path, label: str, fragment: str) -> None:
    rows = [("a", "tumor"), ("b", "normal"), ("c", label), ("d", "tumor"), ("e", "tumor"), ("f", "tumor")]
    path = _labels(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelError) as error:
        read_labels(path)
    assert str(path) in str(error.value) and fragment in str(error.value)


def test_non_utf8_labels_are_a_clear_error_and_a_bom_is_fine(tmp_path: Path) -> None:
    latin = _labels(tmp_path / "latin.csv", [("é1", "tumor"), ("b", "normal")], encoding="latin-1")
    with pytest.raises(LabelError, match=rf"{latin}: not UTF-8 text .*save the labels CSV as UTF-8"):
        read_labels(latin)
    bom = _labels(tmp_path / "bom.csv", [("a", "tumor"), ("b", "normal")], encoding="utf-8-sig")
    assert read_labels(bom).labels == {"a": "tumor", "b": "normal"}


def test_one_class_labels_stop_wsi_mil_run_before_tiling(tmp_path: Path, slides: Path, capsys) -> None:
    labels = _labels(tmp_path / "labels.csv", [(s, "tumor") for s in IDS])
    status, seconds = _run(tmp_path, slides, labels)
    assert status == 2 and "two or more classes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "bags").exists() and seconds < 30


def test_fold_count_the_patients_cannot_fill_names_the_run_option(tmp_path: Path, slides: Path, capsys) -> None:
    labels = _labels(tmp_path / "labels.csv", [(s, "tumor" if i % 2 else "normal") for i, s in enumerate(IDS)])
    status, _ = _run(tmp_path, slides, labels, "--set", "train.folds=10")
    error = capsys.readouterr().err
    assert status == 2 and "10-fold stratified CV needs at least 10 slide(s) per class" in error
    assert "--set train.folds=N, N at most 5" in error and "--folds N" not in error
    assert not (tmp_path / "run" / "bags").exists()


def test_labels_of_no_slide_in_the_run_stop_before_tiling(tmp_path: Path, slides: Path, capsys) -> None:
    labels = _labels(tmp_path / "labels.csv", [("x1", "tumor"), ("x2", "normal")])
    assert _run(tmp_path, slides, labels)[0] == 2
    assert "none of its 2 slide ids is a slide of run.slides" in capsys.readouterr().err


def test_grouped_folds_that_would_be_badly_unbalanced_are_refused() -> None:
    labels = {f"a{i}": "a" for i in range(3)} | {f"b{i}": "b" for i in range(3)} | {f"big{j}": "b" for j in range(20)}
    patients = {s: s for s in labels} | {f"big{j}": "P7" for j in range(20)}
    with pytest.raises(LabelError, match=r"unbalanced: fold \d would test on 2\d of 26 slides.*'P7' \(20 slides\)"):
        check_fold_plan(labels, patients, folds=3)
    balanced = {s: s for s in labels}  # the same slides, one patient each
    assert check_fold_plan(labels, balanced, folds=3).n_folds == 3
