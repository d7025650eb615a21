"""BreakHis per magnification, the table of the ILAM paper, on the 76 real images we have. Prints markdown.

    .venv/bin/python bench/bench_breakhis.py              # needs ../shared/data/breakhis; tiles, extracts, trains

n is small: 49 images (22 patients) at 40X and 9 images (7-9 patients) at each of 100X,
200X and 400X, against 7,909 images in the full data set. Read the table as "the BreakHis
path runs end to end on real data", not as a result: with 9 images a fold holds 2-3
test images and one error moves accuracy by a third.

The images go through the real pipeline with ``configs/breakhis.yaml`` (native pixels,
224-px patches with half overlap, EfficientNet-Lite0 ImageNet features), one run for all
magnifications; each magnification is then a feature set of its own (a folder of links)
and is cross-validated by patient with k = min(5, patients in the smaller class) folds,
repeated 3 times (new fold seeds) because the folds are so small.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / ".cache" / "breakhis"
HEADS = ("abmil", "ilam", "abmil_plain")
COLUMNS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def main() -> int:
    from wsi_mil.config import load_config
    from wsi_mil.datasets import shared_data_dir
    from wsi_mil.mil.metrics import summarize
    from wsi_mil.mil.run import train_run

    data = shared_data_dir()
    if data is None or not (data / "breakhis" / "labels.csv").exists():
        print("skipped: ../shared/data/breakhis not found (research data; it never ships with the repository)")
        return 0
    source = data / "breakhis"
    with (source / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "slides.csv").write_text("path\n" + "".join(f"{source / r['image']}\n" for r in rows))
    labels = OUT / "labels.csv"
    labels.write_text(
        "slide_id,label,patient_id\n"
        + "".join(f"{Path(r['image']).stem},{r['label']},{r['patient_id']}\n" for r in rows)
    )
    run = OUT / "run"
    config = ROOT / "configs" / "breakhis.yaml"
    wsi_mil = [sys.executable, "-m", "wsi_mil"]
    subprocess.run(
        [
            *wsi_mil,
            "tile",
            str(OUT / "slides.csv"),
            "--out",
            str(run),
            "--config",
            str(config),
            "--workers",
            "0",
            "--quiet",
        ],
        check=True,
    )
    subprocess.run([*wsi_mil, "extract", str(run), "--config", str(config), "--workers", "0", "--quiet"], check=True)
    by_magnification: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_magnification[row["magnification"]].append(row)
    print("| magnification | images (patients) | folds x repeats | head | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---:|" * len(COLUMNS))
    for magnification in sorted(by_magnification, key=lambda m: int(m.rstrip("X"))):
        members = by_magnification[magnification]
        folder = OUT / "by-magnification" / magnification
        folder.mkdir(parents=True, exist_ok=True)
        for row in members:
            link = folder / f"{Path(row['image']).stem}.h5"
            if not link.exists():
                link.symlink_to(run / "features" / "efficientnet_lite0" / link.name)
        patients = defaultdict(set)
        for row in members:
            patients[row["label"]].add(row["patient_id"])
        folds = min(5, min(len(p) for p in patients.values()))
        n_patients = len({r["patient_id"] for r in members})
        for head in HEADS:
            settings = load_config(
                config,
                sets=[
                    f"train.model={head}",
                    f"train.folds={folds}",
                    "train.repeats=3",
                    f"train.name={head}-{magnification}",
                ],
            )
            (result,) = train_run(OUT / "train", labels, config=settings, features=[folder], overwrite=True)
            summary = summarize(result.folds)
            cells = [str(summary[c]) for c in COLUMNS]  # mean ± sample std (wsi_mil.stats)
            print(
                f"| {magnification} | {len(members)} ({n_patients}) | {folds} x 3 | {head} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
