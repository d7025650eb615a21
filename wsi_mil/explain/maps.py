"""Per-patch maps read from a scores file (``RUN_DIR/scores/<model>/<slide_id>.h5``).

The scores file (written by ``wsi-mil predict``) holds ``coords`` (N, 2) with the bag's
tiling attributes, ``attention_raw``, ``attention``, ``attention_pct`` (N,),
``instance_logits`` (N, C), optional ``contribution`` (N, C) (ILAM's m_i^c),
``relevance`` (N,) and ``manifold`` (N,); root attributes ``classes`` (JSON list), ``probs``, ``pred``, ``model``.

Map names. Per-patch vectors are used as stored (``attention_pct``, ``attention_raw``,
``attention``, ``relevance``, ``manifold``). Class maps are for one target class t: the positive
class (the second) of a two-class model, else the predicted class.
``logit_<t>`` is s_i^t minus the mean of the other classes' instance logits (two
classes: s_i^t - s_i^other, the latent map); ``contribution_<t>`` is the same margin of
m_i^c = a_i s_i^c, each patch's exact signed share of the bag's logit margin.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import WsiMilError

VECTOR_MAPS = ("attention_pct", "attention_raw", "attention", "relevance", "manifold")
DEFAULT_MAPS = ("attention_pct", "attention_raw", "logit", "contribution", "relevance", "manifold")


class ScoresFormatError(WsiMilError, ValueError):
    """A scores file lacks what the heatmap stage needs."""


@dataclass
class SlideScores:
    """coords: (N, 2) int64 level-0 (x, y); ``arrays``: name -> (N,) or (N, C) per-patch values."""

    path: Path
    coords: np.ndarray
    attrs: dict[str, Any]
    root_attrs: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def slide_id(self) -> str:
        return str(self.attrs.get("slide_id") or self.path.stem)

    @property
    def classes(self) -> list[str]:
        raw = self.root_attrs.get("classes")
        if isinstance(raw, str):
            raw = json.loads(raw)
        if raw is None:
            width = self.arrays["instance_logits"].shape[1] if "instance_logits" in self.arrays else 0
            raw = [str(i) for i in range(width)]
        return [str(c) for c in raw]

    @property
    def patch_size_level0(self) -> float:
        value = self.attrs.get("patch_size_level0")
        if value is None:
            raise ScoresFormatError(f"{self.path}: coords has no patch_size_level0 attribute; re-run wsi-mil predict")
        return float(value)

    def prediction_text(self) -> str:
        """``pred: <class> p=<probability>`` from the scores' ``pred``/``probs`` (empty when absent)."""
        pred, probs = self.root_attrs.get("pred"), self.root_attrs.get("probs")
        if pred is None or probs is None:
            return ""
        probs = json.loads(probs) if isinstance(probs, str) else list(np.asarray(probs).reshape(-1))
        pred = int(pred)
        name = self.classes[pred] if pred < len(self.classes) else str(pred)
        return f"pred: {name} p={float(probs[pred]):.3f}" if pred < len(probs) else f"pred: {name}"

    def target_class(self) -> int:
        classes = self.classes
        if len(classes) == 2:
            return 1
        pred = self.root_attrs.get("pred")
        return int(pred) if pred is not None else 0


def read_scores(path: str | Path) -> SlideScores:
    """Read a scores file (wsi_mil.store.scores) as the heatmap stage uses it."""
    from wsi_mil.errors import BagFormatError
    from wsi_mil.store.scores import read_scores as read_score_file

    path = Path(path)
    try:
        scores = read_score_file(path)
    except BagFormatError as error:
        raise ScoresFormatError(f"{error}; not a scores file from wsi-mil predict") from error
    except (OSError, KeyError, ValueError) as error:
        raise ScoresFormatError(f"{path}: cannot be read ({error}); delete it and re-run wsi-mil predict") from error
    coords = np.asarray(scores.coords, dtype=np.int64).reshape(-1, 2)
    for name, array in scores.maps.items():
        if array.ndim and array.shape[0] != len(coords):
            raise ScoresFormatError(f"{path}: '{name}' has {array.shape[0]} rows for {len(coords)} patches")
    return SlideScores(path, coords, scores.coords_attrs, scores.attrs, dict(scores.maps))


def safe_name(text: str) -> str:
    """A class name usable in file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "class"


def _margin(values: np.ndarray, target: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1 or values.shape[1] == 1:
        return values.reshape(len(values), -1)[:, 0]
    others = np.delete(values, target, axis=1)
    return values[:, target] - others.mean(axis=1)


def available_maps(
    scores: SlideScores, *, target: int | None = None, label: str | None = None
) -> dict[str, np.ndarray]:
    """Every map this file supports, name -> (N,) float64. Class maps are for ``target``
    (default: :meth:`SlideScores.target_class`), named with ``label`` (default: the class name)."""
    maps = {
        name: np.asarray(scores.arrays[name], dtype=np.float64).reshape(-1)
        for name in VECTOR_MAPS
        if name in scores.arrays
    }
    classes = scores.classes
    target = scores.target_class() if target is None else target
    if label is None:
        label = safe_name(classes[target]) if target < len(classes) else str(target)
    for kind, key in (("logit", "instance_logits"), ("contribution", "contribution")):
        if key in scores.arrays:
            maps[f"{kind}_{label}"] = _margin(scores.arrays[key], target)
    return maps


def select_maps(scores: SlideScores, wanted: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The maps to draw: ``wanted`` names (``logit``/``contribution`` mean the target class's),
    or the defaults that the file has. Unknown names raise, listing what exists."""
    maps = available_maps(scores)
    names = wanted or DEFAULT_MAPS
    chosen: dict[str, np.ndarray] = {}
    for name in names:
        if name in maps:
            chosen[name] = maps[name]
            continue
        prefixed = [m for m in maps if m.startswith(f"{name}_")]
        if prefixed:
            chosen.update({m: maps[m] for m in prefixed})
        elif wanted:
            raise ScoresFormatError(f"{scores.path}: no map {name!r}; this file has: {', '.join(maps) or 'none'}")
    if not chosen:
        raise ScoresFormatError(f"{scores.path}: no per-patch scores to draw (looked for {', '.join(names)})")
    return chosen
