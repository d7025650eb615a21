"""Where a run's outputs live: the one place that knows the run folder's layout.

```
RUN_DIR/
  run_config.json          resolved config of ``wsi-mil run`` (paths absolute)
  tiling_config.json       resolved config of the last tiling
  manifest.csv             one row per slide, stage and output set
  .wsi-mil.lock            one writer per run folder
  bags/[<set>/]<slide_id>.h5|zarr          patch bags; a <set>/ level per resolution when there are several
  qc/[<set>/]<slide_id>.png                tiling QC thumbnails
  features/<encoder>/[<set>/]<slide_id>.h5|zarr   feature files, one folder per encoder
  clam/<encoder>/[<set>/]h5_files|pt_files/       CLAM's data_dir copies (extract.clam_files)
  models/<head>/train_config.json, [<set>/]fold_<k>/ ...   trained heads (wsi_mil.mil.run)
  scores/<head>/[<set>/]<slide_id>.h5      per-patch maps and slide probabilities
  heatmaps/<head>/heatmap_config.json, [<set>/]<slide_id>/ ...   stitched maps, CAMs
  explanations/<head>/                     explanation metrics tables
```

Stages ask a :class:`RunLayout` for these paths and never join them by hand, so the
layout can be read (and changed) here. What a stage writes inside its own folder
(fold folders, table names) stays with that stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_CONFIG = "run_config.json"
TILING_CONFIG = "tiling_config.json"
MANIFEST_NAME = "manifest.csv"
LOCK_NAME = ".wsi-mil.lock"
TRAIN_CONFIG = "train_config.json"
HEATMAP_CONFIG = "heatmap_config.json"

BAGS = "bags"
QC = "qc"
FEATURES = "features"
CLAM = "clam"
MODELS = "models"
SCORES = "scores"
HEATMAPS = "heatmaps"
EXPLANATIONS = "explanations"

#: File suffixes of bags and feature files, in lookup order.
STORE_SUFFIXES = (".h5", ".zarr")
#: The sub-folder of a head or bag set that is not a set of its own.
NO_SET = Path(".")


def encoder_dir_name(encoder: str) -> str:
    """The folder name of an encoder's features: ``timm:hf-hub/x`` -> ``timm-hf-hub-x``."""
    return encoder.replace(":", "-").replace("/", "-")


def _set_path(bag_set: str | Path) -> Path:
    """A bag or feature set as a relative path; ``""``, ``"-"`` and ``"."`` are no set."""
    return NO_SET if str(bag_set) in ("", "-", ".") else Path(bag_set)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (see the module doc). Creating one touches nothing on disk.

    ``bag_set`` arguments name a per-resolution set (``0.5mpp``, ``level1``...) or a
    feature set's key; ``""`` (or ``"-"``) is the run without set levels.
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------ run files

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def tiling_config(self) -> Path:
        return self.root / TILING_CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    # ------------------------------------------------------------------ tiling

    @property
    def bags_root(self) -> Path:
        return self.root / BAGS

    @property
    def qc_root(self) -> Path:
        return self.root / QC

    def bag_dir(self, bag_set: str | Path = "") -> Path:
        return self.bags_root / _set_path(bag_set)

    def qc_dir(self, bag_set: str | Path = "") -> Path:
        return self.qc_root / _set_path(bag_set)

    def find_bags(self) -> list[tuple[str, Path]]:
        """Every bag: ``(bag set, path)`` from ``bags/`` (set ``""``) and its ``bags/<set>/``
        sub-folders, in a stable order; [] without ``bags/``."""
        root = self.bags_root
        if not root.is_dir():
            return []
        folders = [(root, "")] + [(d, d.name) for d in sorted(root.iterdir()) if d.is_dir() and d.suffix != ".zarr"]
        return [
            (set_name, bag)
            for folder, set_name in folders
            for bag in sorted(folder.iterdir())
            if not bag.name.startswith(".") and bag.suffix in STORE_SUFFIXES
        ]

    def find_bag(self, slide_id: str, bag_set: str | Path = "", *, other_sets: bool = False) -> Path | None:
        """The slide's bag: in ``bags/<bag_set>/``, else in ``bags/``; with ``other_sets``, else
        in any set (the first in name order). None when there is none."""
        for folder in dict.fromkeys((self.bag_dir(bag_set), self.bags_root)):
            for suffix in STORE_SUFFIXES:
                if (folder / f"{slide_id}{suffix}").exists():
                    return folder / f"{slide_id}{suffix}"
        if other_sets:
            for _, bag in self.find_bags():
                if bag.stem == slide_id:
                    return bag
        return None

    # ------------------------------------------------------------------ extraction

    @property
    def features_root(self) -> Path:
        return self.root / FEATURES

    def features_dir(self, encoder: str, bag_set: str | Path = "") -> Path:
        """``features/<encoder>/[<set>/]`` for an encoder name (``extract.encoder``)."""
        return self.features_root / encoder_dir_name(encoder) / _set_path(bag_set)

    def feature_set_dir(self, relative: str | Path) -> Path:
        """A feature set by its path relative to ``features/`` (as ``train_config.json`` records it)."""
        return self.features_root / _set_path(relative)

    def clam_dir(self, encoder: str, bag_set: str | Path = "") -> Path:
        """``clam/<encoder>/[<set>/]``: CLAM's ``data_dir`` for these features."""
        return self.root / CLAM / encoder_dir_name(encoder) / _set_path(bag_set)

    # ------------------------------------------------------------------ per head

    @property
    def models_root(self) -> Path:
        return self.root / MODELS

    @property
    def scores_root(self) -> Path:
        return self.root / SCORES

    @property
    def heatmaps_root(self) -> Path:
        return self.root / HEATMAPS

    @property
    def explanations_root(self) -> Path:
        return self.root / EXPLANATIONS

    def model_dir(self, head: str, bag_set: str | Path = "") -> Path:
        """``models/<head>/[<set>/]``: a trained head (one feature set's folds with ``bag_set``)."""
        return self.models_root / head / _set_path(bag_set)

    def train_config(self, head: str) -> Path:
        return self.model_dir(head) / TRAIN_CONFIG

    def scores_dir(self, head: str, bag_set: str | Path = "") -> Path:
        return self.scores_root / head / _set_path(bag_set)

    def scores_file(self, head: str, slide_id: str, bag_set: str | Path = "") -> Path:
        return self.scores_dir(head, bag_set) / f"{slide_id}.h5"

    def scored_heads(self) -> list[str]:
        """The heads with a ``scores/<head>/`` folder, sorted."""
        root = self.scores_root
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    def find_scores(self, head: str | None = None) -> Iterator[tuple[str, Path, Path]]:
        """Every scores file, sorted: ``(head, bag set as a relative path, path)``; hidden files
        (temporary outputs) are left out. ``head``: only that head's."""
        for name in [head] if head is not None else self.scored_heads():
            folder = self.scores_dir(name)
            for path in sorted(folder.rglob("*.h5")) if folder.is_dir() else []:
                if not path.name.startswith("."):
                    yield name, path.parent.relative_to(folder), path

    def heatmap_head_dir(self, head: str) -> Path:
        """``heatmaps/<head>/``: the head's heatmap config and cohort colour ranges."""
        return self.heatmaps_root / head

    def heatmap_dir(self, head: str, slide_id: str, bag_set: str | Path = "") -> Path:
        """``heatmaps/<head>/[<set>/]<slide_id>/``: every map file of one slide."""
        return self.heatmap_head_dir(head) / _set_path(bag_set) / slide_id

    def explanations_dir(self, head: str) -> Path:
        return self.explanations_root / head

    def head_outputs(self, head: str) -> dict[str, Path]:
        """Per stage that writes per head: its folder of ``head`` (train, predict, heatmap, evaluate)."""
        return {
            "train": self.model_dir(head),
            "predict": self.scores_dir(head),
            "heatmap": self.heatmap_head_dir(head),
            "evaluate": self.explanations_dir(head),
        }

    def per_head_roots(self) -> list[Path]:
        """The folders of every stage that writes per head (models/, scores/, heatmaps/, explanations/)."""
        return [self.models_root, self.scores_root, self.heatmaps_root, self.explanations_root]

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run folder (POSIX), or its bare name outside it: never absolute."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(path).name
