"""GlaS: slide metrics of every head and every map's localization against the gland masks. Prints markdown.

    .venv/bin/python bench/bench_glas_features.py     # once: tile + extract the 165 images
    .venv/bin/python bench/bench_glas_maps.py
    .venv/bin/python bench/bench_glas_features.py --patch-size 64 && .venv/bin/python bench/bench_glas_maps.py --cache glas-64

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

Two reference rows that are not maps a user gets, to read the others by: a supervised
gland classifier on the same features (logistic regression on the gland labels of the
other patients' patches, 5 patient-grouped folds: what the features allow at best), and
each map's ROC-AUC against the glands of the benign images (is the map a gland detector
whatever the class?).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache" / "recipe"
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
    step = float(scores.coords_attrs.get("patch_size_level0") or np.diff(np.unique(scores.coords[:, 0]))[:1].max())
    maps["attention_raw, 3 x 3 neighbour mean"] = neighbour_mean(scores.maps["attention_raw"], scores.coords, step)
    return {k: v for k, v in maps.items() if v is not None}


def reference_scores(
    features: Path, truth: dict[str, np.ndarray], labels: dict[str, str], patients: dict[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """Per slide, out of fold (5 patient-grouped folds, each slide scored by what was fitted
    on the other patients' patches), maps that are not ``wsi-mil predict`` maps:

    - ``supervised gland classifier``: logistic regression on the patches' gland labels
      (uses the masks: what the features allow at best, not a weakly supervised map);
    - ``instance classifier (image label on every patch)``: logistic regression on the
      image's class given to each of its patches (the naive MIL instance baseline);
    - ``distance to benign patches``: 1 - mean cosine similarity to the 20 nearest patches
      of the benign training images (how unlike any benign tissue a patch looks).
    """
    import h5py
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    slides = sorted(truth)
    x = []
    for slide_id in slides:
        with h5py.File(features / f"{slide_id}.h5", "r") as handle:
            x.append(np.asarray(handle["features"], dtype=np.float32))
    rows = np.repeat(np.arange(len(slides)), [len(v) for v in x])
    x, gland = np.concatenate(x), np.concatenate([truth[s] >= 0.5 for s in slides])
    malignant = np.array([labels[slides[i]] == "malignant" for i in rows])
    groups = np.array([patients[slides[i]] for i in rows])
    names = (
        "supervised gland classifier",
        "instance classifier (image label on every patch)",
        "distance to benign patches",
    )
    out = {name: np.zeros(len(x)) for name in names}
    for train, test in GroupKFold(5).split(x, gland, groups):
        for name, target in zip(names, (gland, malignant), strict=False):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000)).fit(
                x[train], target[train]
            )
            out[name][test] = model.decision_function(x[test])
        scaler = StandardScaler().fit(x[train])
        benign = scaler.transform(x[train][~malignant[train]])
        benign /= np.linalg.norm(benign, axis=1, keepdims=True)
        query = scaler.transform(x[test])
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        out[names[2]][test] = 1 - np.sort(query @ benign.T, axis=1)[:, -20:].mean(axis=1)
    return {s: {f"{name} (reference)": values[rows == i] for name, values in out.items()} for i, s in enumerate(slides)}


def neighbour_mean(values: np.ndarray, coords: np.ndarray, step: float) -> np.ndarray:
    """Each patch's value averaged with its 8 grid neighbours (a 3 x 3 box filter over the patch grid)."""
    near = np.abs(coords[:, None, :] - coords[None, :, :]).max(axis=2) <= step
    return (near * values[None, :]).sum(axis=1) / near.sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.mil.metrics import METRICS, summarize
    from wsi_mil.mil.predict import predict_run
    from wsi_mil.mil.run import train_run
    from wsi_mil.stats import mean_std, roc_auc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", default="glas", help="folder under bench/.cache/recipe (bench_glas_features.py --out)"
    )
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--scored", action="store_true", help="score the maps already in the run (no training)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train.key=value for every head")
    parser.add_argument(
        "--run", default="run", help="run folder under the cache folder, so that runs can go side by side"
    )
    args = parser.parse_args(argv)
    glas = CACHE / args.cache
    if not (glas / "gland_fraction.npz").exists():
        print("skipped: run bench/bench_glas_features.py first (needs ../shared/data/glas)")
        return 0
    truth = dict(np.load(glas / "gland_fraction.npz"))
    rows = [line.split(",") for line in (glas / "labels.csv").read_text().splitlines()[1:]]
    labels, patients = {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows}
    mixed = [s for s in truth if 0 < (truth[s] >= 0.5).mean() < 1]
    malignant = [s for s in mixed if labels.get(s) == "malignant"]
    benign = [s for s in mixed if labels.get(s) == "benign"]
    run = glas / args.run
    for shared in ("bags", "features"):  # another run folder reuses the tiled and extracted images
        if run != glas / "run" and (glas / "run" / shared).exists() and not (run / shared).exists():
            run.mkdir(parents=True, exist_ok=True)
            (run / shared).symlink_to(Path("..") / "run" / shared)
    print("| head | " + " | ".join(m.replace("_", " ") for m in METRICS) + " | pooled OOF ROC-AUC |")
    print("|---|" + "---:|" * (len(METRICS) + 1))
    per_map: dict[str, list[float]] = {}
    in_benign: dict[str, list[float]] = {}
    for head in args.heads:
        if not args.scored:
            config = load_config(None, sets=[f"train.model={head}", "train.folds=5", *args.overrides])
            (result,) = train_run(run, glas / "labels.csv", config=config, features=[glas / "features"], overwrite=True)
            summary = summarize(result.folds)
            cells = [f"{summary[m][0]:.3f} ± {summary[m][1]:.3f}" for m in METRICS]
            print(f"| {head} | " + " | ".join(cells) + f" | {result.pooled[0]['roc_auc']:.3f} |", flush=True)
            predict_run(run, run / "models" / head, device="cpu", overwrite=True)
        for slide_id in mixed:
            table = per_map if slide_id in malignant else in_benign
            for name, values in learned_maps(run / "scores" / head / f"{slide_id}.h5").items():
                table.setdefault(f"{head}: {name}", []).append(roc_auc(values, truth[slide_id] >= 0.5))
    references = reference_scores(glas / "features", truth, labels, patients)
    for slide_id in mixed:
        table = per_map if slide_id in malignant else in_benign
        maps = {**stain_baselines(run, slide_id), **references[slide_id]}
        for name, values in maps.items():
            table.setdefault(name, []).append(roc_auc(values, truth[slide_id] >= 0.5))
    print(
        f"\nPatch ROC-AUC against the gland masks, mean ± std over {len(malignant)} malignant images "
        "(a patch is positive when at least half of it is gland):\n"
    )
    print(f"| map | patch ROC-AUC, malignant | in the {len(benign)} benign images |\n|---|---:|---:|")
    for name, values in sorted(per_map.items(), key=lambda kv: -np.mean(kv[1])):
        other = in_benign.get(name, [np.nan])
        print(f"| {name} | {mean_std(values)} | {np.mean(other):.3f} |")
    (glas / "maps.json").write_text(json.dumps({k: float(np.mean(v)) for k, v in per_map.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
