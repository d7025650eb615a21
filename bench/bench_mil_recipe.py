"""The MIL training recipe against a careful minimal reference, on the same splits. Prints a table; not a test.

    .venv/bin/python bench/bench_mil_recipe.py                         # every synthetic set, every head
    .venv/bin/python bench/bench_mil_recipe.py --sets tiny-hard --heads abmil reference
    .venv/bin/python bench/bench_mil_recipe.py --sets glas             # needs bench/bench_glas_features.py first
    .venv/bin/python bench/bench_mil_recipe.py --set train.lr=0.001    # try another setting for our heads

Sets (built here, cached in bench/.cache/recipe/): MIL sets of tabular-like instances with
known witnesses, made to resemble the public MIL benchmarks a user tries first (Musk: ~100
bags, 2-40 instances, 166-d, raw ranges of hundreds; Fox/Tiger/Elephant: 200 bags, 230-d,
few instances) and a whole-slide-like set of long bags with rare witnesses:

- ``tiny-easy``: 100 bags x 2-40 instances x 166-d, unscaled (channels span hundreds);
- ``tiny-hard``: 100 bags x 2-40 x 230-d, unscaled, witnesses close to a background cluster;
- ``tiny-200``: 200 bags x 2-13 x 230-d, moderate scale;
- ``long``: 40 bags x 1,500-2,000 x 128-d, witnesses about 1% of a positive bag;
- ``glas``: GlaS through the real pipeline (features from ``bench/bench_glas_features.py``),
  benign vs malignant, patient-grouped folds.

Instances: latent points (8-d) from six background clusters, or, in positive bags, from a
witness cluster (each instance with probability ``witness_rate``, at least one per bag),
mapped to D channels by a fixed random nonlinear map, then per-channel scale and offset.

Heads: ``abmil``, ``ilam``, ``abmil_plain`` through ``wsi_mil.mil.run.train_run`` with the
default config (what ``wsi-mil train`` does), and ``reference``: a ~40-line plain-PyTorch
gated ABMIL (training-fold standardization, Adam lr 5e-4, weight decay 1e-4, 50 epochs,
mini-batches of 8 padded bags, no validation carve-out) trained on exactly the splits in
our run's ``splits.csv`` (train + val slides train it; the test fold tests it).

Columns: accuracy and ROC-AUC mean ± std over folds; instance AUROC (witness vs other
instances of the positive test bags, pooled over folds; each head's out-of-fold model):
ABMIL's attention, ILAM's attention, latent map s_i(1) - s_i(0) and contribution map
a_i (s_i(1) - s_i(0)) (the heatmap stage's ``contribution``); wall and CPU
seconds of training (the whole cross-validation).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache" / "recipe"


@dataclass(frozen=True)
class SetSpec:
    n_bags: int
    sizes: tuple[int, int]
    dim: int
    witness_rate: float
    separation: float
    scale: float  #: channel scales are log-uniform in [1, scale]; offsets of the same order
    folds: int


SETS = {
    "tiny-easy": SetSpec(100, (2, 40), 166, 0.3, 4.0, 300.0, 10),
    "tiny-hard": SetSpec(100, (2, 40), 230, 0.2, 2.2, 300.0, 10),
    "tiny-200": SetSpec(200, (2, 13), 230, 0.3, 2.8, 10.0, 10),
    "long": SetSpec(40, (1500, 2000), 128, 0.01, 2.5, 5.0, 5),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_set(name: str, spec: SetSpec, seed: int = 0) -> Path:
    """features/<bag>.h5, labels.csv and witnesses.npz under CACHE/name (built once)."""
    from wsi_mil.store.features import write_features

    folder = CACHE / name
    if (folder / "labels.csv").exists():
        return folder
    rng = np.random.default_rng(seed)
    latent = 8
    centres = rng.normal(scale=2.0, size=(6, latent))
    direction = rng.normal(size=latent)
    witness_centre = centres[0] + spec.separation * direction / np.linalg.norm(direction)
    mixing = rng.normal(size=(latent, spec.dim)) / np.sqrt(latent)
    scales = np.exp(rng.uniform(0, np.log(spec.scale), size=spec.dim))
    offsets = rng.normal(scale=spec.scale / 2, size=spec.dim)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "features").mkdir(parents=True)
    witnesses, rows = {}, ["slide_id,label"]
    for index in range(spec.n_bags):
        label = index % 2
        n = int(rng.integers(spec.sizes[0], spec.sizes[1] + 1))
        z = centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, latent))
        planted = np.zeros(n, bool)
        if label:
            planted = rng.random(n) < spec.witness_rate
            planted[rng.integers(n)] = True
            z[planted] = witness_centre + rng.normal(size=(planted.sum(), latent))
        x = np.tanh(z @ mixing) + 0.3 * rng.normal(size=(n, spec.dim))
        x = (x * scales + offsets).astype(np.float32)
        side = int(np.ceil(np.sqrt(n)))
        coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 256
        slide = f"bag_{index:04d}"
        write_features(
            tmp / "features" / f"{slide}.h5",
            x,
            coords,
            {"encoder": "synthetic", "embed_dim": spec.dim, "weights": "random", "slide_id": slide},
        )
        witnesses[slide] = planted
        rows.append(f"{slide},{'positive' if label else 'negative'}")
    np.savez(tmp / "witnesses.npz", **witnesses)
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    tmp.rename(folder)
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_bags(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    from wsi_mil.store.features import read_features

    labels_rows = read_rows(folder / "labels.csv")
    classes = sorted({r["label"] for r in labels_rows})
    feature_dir = folder / "features"
    bags = {
        r["slide_id"]: np.asarray(read_features(feature_dir / f"{r['slide_id']}.h5").features, np.float32)
        for r in labels_rows
        if (feature_dir / f"{r['slide_id']}.h5").exists()
    }
    labels = {r["slide_id"]: classes.index(r["label"]) for r in labels_rows if r["slide_id"] in bags}
    return bags, labels


# ------------------------------------------------------------------ the reference (plain torch)


def reference_fold(
    bags: dict[str, np.ndarray], labels: dict[str, int], train: list[str], test: list[str], seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The minimal gated ABMIL: P(class 1) for ``test`` and each test bag's attention scores."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    stacked = np.concatenate([bags[s] for s in train])
    mean, std = stacked.mean(0), stacked.std(0) + 1e-6
    prep = {s: torch.from_numpy((bags[s] - mean) / std).float() for s in set(train) | set(test)}

    class Gated(nn.Module):
        def __init__(self, d: int, h: int = 256, a: int = 128) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.25))
            self.v, self.u, self.w, self.out = nn.Linear(h, a), nn.Linear(h, a), nn.Linear(a, 1), nn.Linear(h, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.embed(x)
            scores = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)
            a = scores.masked_fill(~mask, float("-inf")).softmax(1)
            return self.out((a.unsqueeze(-1) * h).sum(1)), scores

    def batch(ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(prep[s]) for s in ids)
        x = torch.zeros(len(ids), n, stacked.shape[1])
        mask = torch.zeros(len(ids), n, dtype=torch.bool)
        for i, s in enumerate(ids):
            x[i, : len(prep[s])], mask[i, : len(prep[s])] = prep[s], True
        return x, mask

    model = Gated(stacked.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    for _ in range(50):
        model.train()
        order = np.random.default_rng(seed + _).permutation(train).tolist()
        for start in range(0, len(order), 8):
            ids = order[start : start + 8]
            logits, _scores = model(*batch(ids))
            loss = nn.functional.cross_entropy(logits, torch.tensor([labels[s] for s in ids]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    probs, attention = [], {}
    with torch.no_grad():
        for s in test:
            logits, scores = model(prep[s][None], torch.ones(1, len(prep[s]), dtype=torch.bool))
            probs.append(float(logits.softmax(1)[0, 1]))
            attention[s] = scores[0].numpy()
    return np.array(probs), attention


# ------------------------------------------------------------------ running heads


def run_head(head: str, folder: Path, overrides: list[str], run_dir: Path) -> Path:
    from wsi_mil.config import load_config
    from wsi_mil.mil.run import train_run

    folds = SETS[folder.name].folds if folder.name in SETS else 5
    sets = [f"train.model={head}", f"train.folds={folds}", *overrides]
    config = load_config(None, sets=sets)
    train_run(run_dir, folder / "labels.csv", config=config, features=[folder / "features"], overwrite=True)
    return run_dir / "models" / head


def fold_results(model_dir: Path) -> list[dict[str, float]]:
    """Test metrics of every fold of every repeat."""
    from wsi_mil.mil.fold_io import repeat_dirs

    return [
        json.loads(p.read_text())["test"] for d in repeat_dirs(model_dir) for p in sorted(d.glob("fold_*/metrics.json"))
    ]


def instance_maps(
    model_dir: Path, bags: dict[str, np.ndarray], splits: list[dict[str, str]]
) -> dict[str, dict[str, np.ndarray]]:
    """Per map name: slide -> per-instance scores from the fold model that held the slide out."""
    import torch

    from wsi_mil.mil.fold_io import load_fold_model

    maps: dict[str, dict[str, np.ndarray]] = {"attention": {}, "latent": {}, "contribution": {}}
    for fold_dir in sorted(model_dir.glob("fold_*")):
        fold = int(fold_dir.name.split("_")[1])
        model, _ = load_fold_model(fold_dir, "cpu")
        with torch.inference_mode():
            for row in splits:
                if int(row["test_fold"]) != fold:
                    continue
                out = model(torch.from_numpy(bags[row["slide_id"]]))
                maps["attention"][row["slide_id"]] = out.attention_raw.numpy()
                s = out.instance_logits.numpy()
                maps["latent"][row["slide_id"]] = s[:, 1] - s[:, 0]
                if out.contribution is not None:  # ILAM: m_i = a_i (s_i(1) - s_i(0)), its heatmap
                    m = out.contribution.numpy()
                    maps["contribution"][row["slide_id"]] = m[:, 1] - m[:, 0]
    return maps


def instance_auroc(scores: dict[str, np.ndarray], witnesses: dict[str, np.ndarray] | None) -> float:
    from wsi_mil.stats import roc_auc

    if witnesses is None:
        return float("nan")
    truth, values = [], []
    for slide, planted in witnesses.items():
        if slide in scores and planted.any() and not planted.all():
            truth.append(planted)
            values.append(scores[slide])
    return roc_auc(np.concatenate(values), np.concatenate(truth)) if truth else float("nan")


def repeat_instance_auroc(per_repeat: list[dict[str, np.ndarray]], witnesses: dict[str, np.ndarray] | None) -> float:
    """Instance AUROC pooled over the folds of each repeat, then averaged over repeats."""
    return float(np.mean([instance_auroc(scores, witnesses) for scores in per_repeat]))


def mean_std(values: list[float | None]) -> str:
    """Mean ± sample std (wsi_mil.stats), over the values that are there."""
    from wsi_mil.stats import mean_std as summary

    return str(summary(x for x in values if x is not None))


def bench_set(name: str, heads: list[str], overrides: list[str], tag: str = "") -> list[str]:
    import torch

    from wsi_mil.mil.fold_io import repeat_dirs
    from wsi_mil.mil.metrics import compute_metrics

    folder = build_set(name, SETS[name]) if name in SETS else CACHE / name
    if not (folder / "labels.csv").exists():
        raise SystemExit(f"{folder}: no labels.csv; for glas run bench/bench_glas_features.py first")
    bags, labels = load_bags(folder)
    witnesses = dict(np.load(folder / "witnesses.npz")) if (folder / "witnesses.npz").exists() else None
    run_dir = CACHE / "runs" / (f"{name}-{tag}" if tag else name)
    lines = []
    splits_paths: list[Path] = []
    for head in [h for h in heads if h != "reference"]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        model_dir = run_head(head, folder, overrides, run_dir)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        splits_paths = [d / "splits.csv" for d in repeat_dirs(model_dir)]
        folds = fold_results(model_dir)
        maps = [instance_maps(d, bags, read_rows(d / "splits.csv")) for d in repeat_dirs(model_dir)]
        rules = [
            json.loads(p.read_text())["selection"]["rule"]
            for d in repeat_dirs(model_dir)
            for p in sorted(d.glob("fold_*/metrics.json"))
        ]
        inst = f"attention {repeat_instance_auroc([m['attention'] for m in maps], witnesses):.3f}"
        if head == "ilam":
            inst += f", latent {repeat_instance_auroc([m['latent'] for m in maps], witnesses):.3f}"
            inst += f", contribution {repeat_instance_auroc([m['contribution'] for m in maps], witnesses):.3f}"
        lines.append(
            f"| {name} | {head} | {mean_std([f['accuracy'] for f in folds])} | "
            f"{mean_std([f['roc_auc'] for f in folds])} | {inst} | {wall:.0f} / {cpu:.0f} | "
            f"{rules.count('fixed')} fixed, {rules.count('early_stopping')} early stop |"
        )
        print(lines[-1], flush=True)
    if "reference" in heads:
        if not splits_paths:
            splits_paths = [d / "splits.csv" for d in repeat_dirs(run_head("abmil", folder, overrides, run_dir))]
        torch.set_num_threads(1)
        wall, cpu = time.perf_counter(), cpu_seconds()
        folds, attentions = [], []
        for repeat, splits_path in enumerate(splits_paths):  # the same folds as our heads, repeat by repeat
            rows = read_rows(splits_path)
            attention: dict[str, np.ndarray] = {}
            for fold in range(max(int(r["test_fold"]) for r in rows) + 1):
                train = [r["slide_id"] for r in rows if r[f"fold_{fold}"] in ("train", "val")]
                test = [r["slide_id"] for r in rows if r[f"fold_{fold}"] == "test"]
                # a new seed in every repeat, as our heads get: one seed's luck does not repeat
                probs, att = reference_fold(bags, labels, train, test, seed=fold + 1000 * repeat)
                attention.update(att)
                folds.append(compute_metrics(np.array([labels[s] for s in test]), np.stack([1 - probs, probs], 1)))
            attentions.append(attention)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        lines.append(
            f"| {name} | reference | {mean_std([f['accuracy'] for f in folds])} | "
            f"{mean_std([f['roc_auc'] for f in folds])} | "
            f"attention {repeat_instance_auroc(attentions, witnesses):.3f} | "
            f"{wall:.0f} / {cpu:.0f} | 50 epochs, no carve-out |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--heads", nargs="+", default=["abmil", "ilam", "abmil_plain", "reference"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train.key=value for our heads")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of cross-validation (new fold seeds); the reference trains on the same folds",
    )
    parser.add_argument("--tag", default="", help="run folder runs/<set>-<tag>, so that runs can go side by side")
    args = parser.parse_args()
    if args.repeats > 1:
        args.overrides.append(f"train.repeats={args.repeats}")
    import logging

    logging.basicConfig(level=logging.WARNING)
    print("| set | head | accuracy | ROC-AUC | instance AUROC | train s wall / CPU | selection |")
    print("|---|---|---:|---:|---|---:|---|", flush=True)
    for name in args.sets:
        bench_set(name, args.heads, args.overrides, args.tag)


if __name__ == "__main__":
    main()
