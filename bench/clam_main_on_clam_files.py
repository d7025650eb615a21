"""CLAM's own ``main.py`` trains, unchanged, on what ``wsi-mil extract --clam-files`` writes.

Plumbing proof, not accuracy: ten small synthetic slides, random-weight ResNet-18 features
(512-d), arbitrary labels. wsi-mil tiles and extracts with ``--clam-files``; then, in a
temporary copy of CLAM's sources (``../shared/anchors/CLAM``, never imported by wsi-mil),
CLAM's ``create_splits_seq.py`` and ``main.py`` run with a separate interpreter that has
CLAM's dependencies (pandas < 3), their ``data_dir`` pointing at ``RUN_DIR/clam/resnet18``
(``--B 2``: CLAM samples B patches per bag for its instance loss, and these bags hold about
six). Prints CLAM's per-fold test lines and the seconds of each step.

    python bench/clam_main_on_clam_files.py --clam-python /path/to/clam-venv/bin/python
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLAM = REPO.parent / "shared" / "anchors" / "CLAM"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clam-python", required=True, help="an interpreter with CLAM's dependencies")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if not (CLAM / "main.py").exists():
        sys.exit(f"skipped: CLAM's sources are not at {CLAM}")
    from wsi_mil.synthetic import Region, write_synthetic_slide

    work = args.keep or Path(tempfile.mkdtemp(prefix="clam-interop-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    slides, out = work / "slides", work / "run"
    for index in range(10):
        write_synthetic_slide(
            slides / f"slide{index}.svs",
            width=1024,
            height=1024,
            mpp=0.5,
            regions=[Region(128 + 32 * index, 128, 768, 640)],
            downsamples=(1,),
        )
    wsi_mil = [sys.executable, "-m", "wsi_mil.cli"]
    _, tile_s = run([*wsi_mil, "tile", str(slides), "--out", str(out), "--workers", "0", "--quiet"], work, env)
    _, extract_s = run(
        [
            *wsi_mil,
            "extract",
            str(out),
            "--encoder",
            "resnet18",
            "--weights",
            "random",
            "--clam-files",
            "--workers",
            "0",
            "--quiet",
        ],
        work,
        env,
    )

    clam = work / "CLAM"
    shutil.copytree(CLAM, clam, dirs_exist_ok=True)
    (clam / "dataset_csv").mkdir(exist_ok=True)
    with (clam / "dataset_csv" / "tumor_vs_normal_dummy_clean.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "slide_id", "label"])
        for index in range(10):
            writer.writerow([f"patient{index}", f"slide{index}", "tumor_tissue" if index % 2 else "normal_tissue"])
    root = work / "data_root"
    root.mkdir(exist_ok=True)
    link = root / "tumor_vs_normal_resnet_features"
    if not link.exists():
        link.symlink_to(out / "clam" / "resnet18")  # CLAM's data_dir = <data_root_dir>/<task's folder>
    clam_env = {**env, "PYTHONPATH": ""}
    task = ["--task", "task_1_tumor_vs_normal"]
    _, split_s = run(
        [
            args.clam_python,
            "create_splits_seq.py",
            *task,
            "--seed",
            "1",
            "--k",
            "2",
            "--val_frac",
            "0.2",
            "--test_frac",
            "0.2",
        ],
        clam,
        clam_env,
    )
    stdout, train_s = run(
        [
            args.clam_python,
            "main.py",
            *task,
            "--data_root_dir",
            str(root),
            "--embed_dim",
            "512",
            "--k",
            "2",
            "--max_epochs",
            "2",
            "--model_type",
            "clam_sb",
            "--exp_code",
            "wsimil",
            "--results_dir",
            str(work / "results"),
            "--seed",
            "1",
            "--B",
            "2",
        ],
        clam,
        clam_env,
    )
    for line in stdout.splitlines():
        if "Test error" in line or "Test AUC" in line or "test_auc" in line.lower():
            print("CLAM:", line.strip())
    summary = sorted((work / "results").rglob("summary.csv"))
    print("CLAM summary:", summary[0].read_text().strip() if summary else "missing")
    print(f"seconds: tile {tile_s:.1f}, extract {extract_s:.1f}, CLAM splits {split_s:.1f}, CLAM main.py {train_s:.1f}")
    print(f"pt_files: {len(list((out / 'clam' / 'resnet18' / 'pt_files').glob('*.pt')))}; work folder: {work}")


if __name__ == "__main__":
    main()
