"""Score files: what ``wsi-mil predict`` writes and the heatmap stage reads.

``RUN_DIR/scores/<model>/[<set>/]<slide_id>.h5``, one per slide, written atomically:

- ``coords`` (N, 2) int64, level-0 (x, y) of each patch (the feature file's rows), with
  the geometry attributes of the bag (:data:`GEOMETRY_ATTRS`) when they are known;
- ``attention_raw`` (N,) float32 pre-softmax attention scores (comparable across slides);
- ``attention`` (N,) float32 softmax weights (sum to 1 within the slide);
- ``attention_pct`` (N,) float32 percentile rank of ``attention_raw`` within the slide, in [0, 1];
- ``instance_logits`` (N, C) float32: ILAM's latent logits s_i; for ABMIL the bag
  classifier applied to each instance embedding;
- ``contribution`` (N, C) float32, ILAM only: m_i^c = a_i s_i^c;
- ``relevance`` (N,) float32, ILAM with its transformer only: attention rollout r_i;
- ``manifold`` (N,) float32 in [0, 1]: manifold ranking over the patch grid seeded with the
  most attended patches (wsi_mil.mil.manifold), optional.

Root attributes (:data:`ROOT_ATTRS`): ``probs`` (C,), ``pred``, ``classes`` (JSON list),
``model``, ``folds`` (JSON list of fold indices used), ``fold_policy``, ``slide_id``,
``format_version``, and ``complete_rows`` (N, written last: :mod:`wsi_mil.store.complete`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import BagFormatError
from wsi_mil.store.atomic import atomic_output
from wsi_mil.store.attrs import clean_attrs, h5_attr
from wsi_mil.store.complete import mark_complete, output_problem

SCORES_FORMAT_VERSION = "1.0"

COORDS = "coords"
ATTENTION_RAW = "attention_raw"
ATTENTION = "attention"
ATTENTION_PCT = "attention_pct"
INSTANCE_LOGITS = "instance_logits"
CONTRIBUTION = "contribution"
RELEVANCE = "relevance"
MANIFOLD = "manifold"
#: Per-patch maps, in the order they are written; all but the first four are optional.
SCORE_DATASETS = (ATTENTION_RAW, ATTENTION, ATTENTION_PCT, INSTANCE_LOGITS, CONTRIBUTION, RELEVANCE, MANIFOLD)
REQUIRED_DATASETS = (ATTENTION_RAW, ATTENTION, ATTENTION_PCT, INSTANCE_LOGITS)
#: Bag attributes copied onto ``coords`` (when known) so the heatmap stage need not open the bag.
GEOMETRY_ATTRS = (
    "patch_size_level0",
    "patch_size",
    "patch_level",
    "slide_mpp",
    "target_mpp",
    "slide_path",
    "slide_id",
    "level_dim",
)
ROOT_ATTRS = ("probs", "pred", "classes", "model", "folds", "fold_policy", "slide_id", "format_version")


@dataclass
class ScoreFile:
    path: Path
    coords: np.ndarray  #: (N, 2) int64
    maps: dict[str, np.ndarray]  #: name -> (N,) or (N, C) float32
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])


def write_scores(
    path: str | Path,
    coords: np.ndarray,
    maps: dict[str, np.ndarray],
    *,
    attrs: dict[str, Any],
    coords_attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one slide's scores atomically (HDF5). ``maps`` keys must be in :data:`SCORE_DATASETS`."""
    import h5py

    path = Path(path)
    unknown = set(maps) - set(SCORE_DATASETS)
    missing = set(REQUIRED_DATASETS) - set(maps)
    if unknown or missing:
        raise ValueError(f"score maps: unknown {sorted(unknown)}, missing {sorted(missing)}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    root = {**attrs, "format_version": SCORES_FORMAT_VERSION}
    root["classes"] = json.dumps(list(root["classes"]))
    root["folds"] = json.dumps([int(f) for f in root.get("folds", [])])
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dataset = f.create_dataset(COORDS, data=coords)
            for key, value in (coords_attrs or {}).items():
                if value is not None:
                    dataset.attrs[key] = h5_attr(value)
            for name in SCORE_DATASETS:
                if name in maps:
                    data = np.asarray(maps[name], dtype=np.float32)
                    if len(data) != len(coords):
                        raise ValueError(f"{name}: {len(data)} rows for {len(coords)} coords")
                    f.create_dataset(name, data=data)
            for key, value in root.items():
                f.attrs[key] = np.asarray(value, np.float32) if key == "probs" else h5_attr(value)
            mark_complete(f, len(coords))
    return path


def scores_problem(path: str | Path) -> str | None:
    """Why the score file at ``path`` cannot be skipped as complete (missing, unreadable, truncated), or None."""
    return output_problem(path, (COORDS, *REQUIRED_DATASETS))


def read_scores(path: str | Path) -> ScoreFile:
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if COORDS not in f or ATTENTION_RAW not in f:
            raise BagFormatError(f"{path}: not a score file (no '{COORDS}' or '{ATTENTION_RAW}')")
        coords = f[COORDS][...]
        coords_attrs = clean_attrs(dict(f[COORDS].attrs))
        maps = {name: f[name][...] for name in SCORE_DATASETS if name in f}
        attrs = clean_attrs(dict(f.attrs))
    attrs["classes"] = json.loads(attrs["classes"])
    attrs["folds"] = json.loads(attrs.get("folds", "[]"))
    attrs["probs"] = np.asarray(attrs["probs"], np.float32)
    return ScoreFile(path, coords, maps, attrs, coords_attrs)
