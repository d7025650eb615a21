"""Bag-level faithfulness: does the model's confidence follow the patches a map ranks highest?

For a slide and its predicted class, a map orders its patches; for each k (a fraction of
the bag) the heads that scored the slide are re-run on (a) the bag without its top-k patches and (b) only its
top-k patches. A faithful map makes (a) drop the target-class probability steeply and
(b) keep most of it. A random order (mean of a few seeded shuffles) is the baseline.
Columns: ``p_full``, ``p_removed``, ``p_kept``, ``drop`` = p_full - p_removed,
``kept`` = p_kept / p_full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)
RANDOM = "random"
#: Monotone transforms of attention_raw rank patches the same way: not repeated.
SAME_RANKING = ("attention", "attention_pct")


@dataclass(frozen=True)
class HeadInputs:
    """The fold heads that scored a slide and the feature file they read."""

    fold_dirs: tuple[Path, ...]
    feature_path: Path


def locate_heads(scores: Any, *, run_dir: Path, model: str, subset: Path) -> HeadInputs | str:
    """The folds named in the scores file and the slide's feature file, or why they cannot be found."""
    from wsi_mil.errors import WsiMilError
    from wsi_mil.mil.run import read_train_record
    from wsi_mil.run_layout import STORE_SUFFIXES, RunLayout

    layout = RunLayout(run_dir)
    model_dir = layout.model_dir(model)
    try:
        record = read_train_record(model_dir)
    except WsiMilError as error:
        return f"{error} (the trained heads are needed)"
    key = "" if subset == Path(".") else subset.as_posix()
    entries = [e for e in record["sets"] if e["key"] == key]
    if not entries:
        return f"{model_dir}: no feature set {key!r} in its training record"
    roots = [Path(entries[0]["root"]), layout.feature_set_dir(entries[0]["relative"])]
    feature_path = next(
        (r / f"{scores.slide_id}{s}" for r in roots for s in STORE_SUFFIXES if (r / f"{scores.slide_id}{s}").exists()),
        None,
    )
    if feature_path is None:
        return f"no feature file for {scores.slide_id} under {roots[0]}"
    set_dir = layout.model_dir(model, key)
    folds = [int(f) for f in scores.root_attrs.get("folds") or []]
    fold_dirs = tuple(set_dir / f"fold_{k}" for k in folds)
    if not fold_dirs or not all((d / "config.json").exists() for d in fold_dirs):
        return f"{set_dir}: the folds {folds} that scored this slide are not all there"
    return HeadInputs(fold_dirs, feature_path)


def load_heads(fold_dirs: Sequence[Path], device: Any) -> list[Any]:
    from wsi_mil.mil.fold_io import load_fold_model

    return [load_fold_model(d, device)[0] for d in fold_dirs]


def _probability(heads: Sequence[Any], features: Any, coords: Any, rows: np.ndarray, target: int) -> float:
    import torch

    index = torch.from_numpy(np.sort(rows))
    with torch.no_grad():
        return float(
            np.mean([torch.softmax(h(features[index], coords[index]).logits, 0)[target].item() for h in heads])
        )


def faithfulness_curves(
    heads: Sequence[Any],
    features: np.ndarray,
    coords: np.ndarray,
    maps: dict[str, np.ndarray],
    *,
    target: int,
    fractions: Sequence[float] = FRACTIONS,
    random_repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per map (plus ``random``) and fraction. features: (N, D); maps: name -> (N,)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    c = torch.from_numpy(np.asarray(coords, np.int64))
    n = len(x)
    everything = np.arange(n)
    p_full = _probability(heads, x, c, everything, target)
    rng = np.random.default_rng(seed)
    orders = {
        name: np.argsort(-np.nan_to_num(np.asarray(v, np.float64), nan=-np.inf), kind="stable")
        for name, v in maps.items()
        if name not in SAME_RANKING
    }
    shuffles = [rng.permutation(n) for _ in range(random_repeats)]
    rows = []
    for fraction in fractions:
        k = min(n - 1, max(1, round(fraction * n)))
        if n < 2:
            break
        for name, order_list in [*((m, [o]) for m, o in orders.items()), (RANDOM, shuffles)]:
            removed = np.mean([_probability(heads, x, c, o[k:], target) for o in order_list])
            kept = np.mean([_probability(heads, x, c, o[:k], target) for o in order_list])
            rows.append(
                {
                    "map": name,
                    "fraction": fraction,
                    "k": k,
                    "p_full": p_full,
                    "p_removed": float(removed),
                    "p_kept": float(kept),
                    "drop": p_full - float(removed),
                    "kept": float(kept) / p_full if p_full > 0 else float("nan"),
                }
            )
    return rows


def summarize_faithfulness(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per map and fraction: the mean drop and kept ratio over slides."""
    table: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        table.setdefault((row["map"], row["fraction"]), []).append(row)
    return [
        {
            "map": name,
            "fraction": fraction,
            "slides": len(group),
            "drop": float(np.mean([r["drop"] for r in group])),
            "kept": float(np.nanmean([r["kept"] for r in group])),
        }
        for (name, fraction), group in table.items()
    ]


def faithfulness_markdown(summary: Sequence[dict[str, Any]]) -> str:
    fractions = sorted({r["fraction"] for r in summary})
    names = list(dict.fromkeys(r["map"] for r in summary))
    cell = {(r["map"], r["fraction"]): r for r in summary}
    header = ["map", *(f"drop@{f:g}" for f in fractions), *(f"kept@{f:g}" for f in fractions)]
    lines = [
        "## Bag-level faithfulness",
        "",
        "Target-class probability lost when a map's top fraction of patches is removed (drop, higher is more "
        "faithful) and the share kept when only those patches remain (kept), for each slide's predicted class "
        f"(`*_pred`: that class's maps); mean over slides. `{RANDOM}`: shuffled orders, the baseline.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name in names:
        values = [f"{cell[(name, f)]['drop']:.3f}" if (name, f) in cell else "n/a" for f in fractions]
        values += [f"{cell[(name, f)]['kept']:.3f}" if (name, f) in cell else "n/a" for f in fractions]
        lines.append("| " + " | ".join([name, *values]) + " |")
    return "\n".join(lines) + "\n"
