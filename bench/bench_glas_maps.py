"""GlaS: slide metrics of every head and every map's localization against the gland masks. Prints markdown.

    .venv/bin/python bench/bench_glas_features.py     # once: tile + extract the 165 images
    .venv/bin/python bench/bench_glas_maps.py

Slide level: benign vs malignant, 5 folds grouped by patient (16 patients), the default
train config, for abmil, ilam and abmil_plain (mean ± std over folds; pooled out-of-fold
ROC-AUC).

Patch level: in the malignant images, the glands are the malignant structure, so a patch
is positive when at least half of it is gland in the GlaS mask. Every map of ``wsi-mil
predict`` (each image scored out of fold, by the model of the fold that held it out) is
scored with ROC-AUC over the patches of each malignant image, then averaged over images
(maps are read within a slide), beside non-learned stain baselines computed from the same
patches, the same ones ``evaluate-maps`` scores (``wsi_mil.explain.stain_baseline``):
mean hematoxylin optical density (scikit-image ``rgb2hed``) and the dark-pixel fraction. A learned map that does not beat them adds nothing a stain
statistic does not already say.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GLAS = ROOT / "bench" / ".cache" / "recipe" / "glas"
HEADS = ("abmil", "ilam", "abmil_plain")


def stain_baselines(run: Path, slide_id: str) -> dict[str, np.ndarray]:
    """Per patch of the bag: the stain baseline maps ``evaluate-maps`` scores (wsi_mil.explain.stain_baseline)."""
    from wsi_mil.explain.stain_baseline import stain_baseline_scores
    from wsi_mil.io import open_slide
    from wsi_mil.store.bags import read_bag

    bag = read_bag(run / "bags" / f"{slide_id}.h5")
    with open_slide(bag.attrs["slide_path"]) as slide:
        maps = stain_baseline_scores(slide, np.asarray(bag.coords), float(bag.attrs["patch_size_level0"]))
    return {f"stain: {name}": values for name, values in maps.items()}


def learned_maps(scores_path: Path) -> dict[str, np.ndarray]:
    from wsi_mil.store.scores import read_scores

    scores = read_scores(scores_path)
    positive = scores.classes.index("malignant")
    negative = 1 - positive
    maps = {"attention_raw": scores.maps["attention_raw"], "manifold": scores.maps.get("manifold")}
    logits = scores.maps["instance_logits"]
    maps["logit (malignant - benign)"] = logits[:, positive] - logits[:, negative]
    if "contribution" in scores.maps:
        contribution = scores.maps["contribution"]
        maps["contribution (malignant - benign)"] = contribution[:, positive] - contribution[:, negative]
    return {k: v for k, v in maps.items() if v is not None}


def main() -> int:
    from sklearn.metrics import roc_auc_score

    from wsi_mil.config import load_config
    from wsi_mil.mil.metrics import METRICS, summarize
    from wsi_mil.mil.predict import predict_run
    from wsi_mil.mil.run import train_run

    if not (GLAS / "gland_fraction.npz").exists():
        print("skipped: run bench/bench_glas_features.py first (needs ../shared/data/glas)")
        return 0
    truth = dict(np.load(GLAS / "gland_fraction.npz"))
    labels = {line.split(",")[0]: line.split(",")[1] for line in (GLAS / "labels.csv").read_text().splitlines()[1:]}
    malignant = [s for s in truth if labels.get(s) == "malignant" and 0 < (truth[s] >= 0.5).mean() < 1]
    run = GLAS / "run"
    print("| head | " + " | ".join(m.replace("_", " ") for m in METRICS) + " | pooled OOF ROC-AUC |")
    print("|---|" + "---:|" * (len(METRICS) + 1))
    per_map: dict[str, list[float]] = {}
    for head in HEADS:
        config = load_config(None, sets=[f"train.model={head}", "train.folds=5"])
        (result,) = train_run(run, GLAS / "labels.csv", config=config, features=[GLAS / "features"], overwrite=True)
        summary = summarize(result.folds)
        cells = [f"{summary[m][0]:.3f} ± {summary[m][1]:.3f}" for m in METRICS]
        print(f"| {head} | " + " | ".join(cells) + f" | {result.pooled[0]['roc_auc']:.3f} |", flush=True)
        predict_run(run, run / "models" / head, device="cpu", overwrite=True)
        for slide_id in malignant:
            for name, values in learned_maps(run / "scores" / head / f"{slide_id}.h5").items():
                per_map.setdefault(f"{head}: {name}", []).append(roc_auc_score(truth[slide_id] >= 0.5, values))
    for slide_id in malignant:
        for name, values in stain_baselines(run, slide_id).items():
            per_map.setdefault(name, []).append(roc_auc_score(truth[slide_id] >= 0.5, values))
    print(f"\nPatch ROC-AUC against the gland masks, mean ± std over {len(malignant)} malignant images "
          "(a patch is positive when at least half of it is gland):\n")
    print("| map | patch ROC-AUC |\n|---|---:|")
    for name, values in sorted(per_map.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"| {name} | {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} |")
    (GLAS / "maps.json").write_text(json.dumps({k: float(np.mean(v)) for k, v in per_map.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
