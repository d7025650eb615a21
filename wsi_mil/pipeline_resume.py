"""Resume checks of ``wsi-mil run``: outputs made with other settings are refused, not skipped.

A rerun into a folder whose ``run_config.json`` differs in a
key that shaped existing outputs (``tiling.patch_size``, ``extract.encoder``,
``train.epochs``...) is refused before any work, naming the keys and the outputs:
skipping them as complete would mix two settings in one run. ``overwrite`` removes those
outputs first, so a killed ``--overwrite`` run also resumes safely. Keys that change how
the work is done but not what it writes (workers, devices, batch sizes, threads, stages,
heads: the fields declared with ``neutral_field`` in wsi_mil.config) may change freely. A
folder without ``run_config.json`` (made by single commands or the staged scripts) is
checked against the tiling settings its bags record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, config_to_json, neutral_keys
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.pipeline_config import encoder_features_dir, heads
from wsi_mil.run_layout import RUN_CONFIG, RunLayout

logger = logging.getLogger(__name__)

STAGE_ORDER = ("tile", "extract", "train", "predict", "heatmap", "evaluate")
#: Keys that change how a run is done, not what it writes: a rerun may change them. Each is
#: declared on its config field (wsi_mil.config.fields.neutral_field). (``run.masks``: the evaluate
#: stage recomputes its tables on every run.)
NEUTRAL_KEYS = neutral_keys()
#: The first stage whose outputs a key shapes (outputs of later stages are made from those).
SECTION_STAGE = {"tiling": "tile", "tissue": "tile", "extract": "extract", "train": "train", "heatmap": "heatmap"}
RUN_KEY_STAGE = {"run.slides": "tile", "run.labels": "train"}


def _flat(data: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in data.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


def _key_stage(key: str) -> str:
    """The first stage ``key`` shapes; a key of no known stage counts as shaping the first."""
    return RUN_KEY_STAGE.get(key) or SECTION_STAGE.get(key.split(".", 1)[0], STAGE_ORDER[0])


def changed_keys(saved: dict[str, Any], config: Config) -> dict[str, tuple[Any, Any]]:
    """Keys of ``config`` (not neutral) whose value differs from the ``saved`` run config: key -> (old, new).

    Keys the saved file lacks (written by an older version) count as their defaults; keys
    it has that this version does not know are ignored. With ``run.models`` set,
    ``train.model`` and ``train.name`` are not used and not compared.
    """
    new = _flat(json.loads(config_to_json(config)))
    old = {**_flat(json.loads(config_to_json(Config()))), **_flat(saved)}
    ignored = set(NEUTRAL_KEYS) | ({"train.model", "train.name"} if config.run.models else set())
    return {key: (old.get(key), value) for key, value in new.items() if key not in ignored and old.get(key) != value}


def stage_outputs(run_dir: Path, config: Config, stage: str) -> list[Path]:
    """What a change of a key of ``stage`` makes stale: that stage's outputs and everything made from them."""
    layout = RunLayout(run_dir)
    if stage == "tile":
        return [layout.bags_root, layout.qc_root, layout.features_root, *layout.per_head_roots()]
    if stage == "extract":
        return [encoder_features_dir(run_dir, config), *layout.per_head_roots()]
    later = STAGE_ORDER[STAGE_ORDER.index(stage) :]
    outputs = {name: layout.head_outputs(name) for name in heads(config)}
    return [per_stage[s] for s in later for per_stage in outputs.values() if s in per_stage]


def _has_files(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def stale_outputs(config: Config, *, where: str = "config", overwrite: bool = False) -> list[Path]:
    """Outputs in ``run.out`` that were made with other settings than ``config``'s (see the module doc).

    Raises ConfigError naming the changed keys and those outputs unless ``overwrite``;
    with ``overwrite``, returns them for removal. Nothing to compare (a new run folder): [].
    """
    run_dir = Path(str(config.run.out))
    path = RunLayout(run_dir).run_config
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a mapping of config sections")  # noqa: TRY004 -- handled with the JSON errors below
            changed = changed_keys(saved, config)
        except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
            changed = {RUN_CONFIG: (f"unreadable ({error}), so every setting counts as changed", None)}
    else:  # outputs of single commands or staged scripts: each bag records the settings that tiled it
        recorded = _bag_settings(run_dir)
        if recorded is None:
            return []
        path, saved = recorded
        changed = {k: v for k, v in changed_keys(saved, config).items() if k.split(".")[0] in ("tiling", "tissue")}
        logger.warning(
            "%s has no %s: only the tiling settings of its outputs can be checked (from %s)", run_dir, RUN_CONFIG, path
        )
    changes = {
        key: old if key == RUN_CONFIG else f"{json.dumps(old)} -> {json.dumps(new)}"
        for key, (old, new) in changed.items()
    }
    stages = {key: _key_stage(key) if key != RUN_CONFIG else "tile" for key in changes}
    found: dict[Path, None] = {}
    conflicting = []
    for key in sorted(stages, key=lambda k: (STAGE_ORDER.index(stages[k]), k)):
        outputs = [p for p in stage_outputs(run_dir, config, stages[key]) if _has_files(p)]
        if outputs:
            conflicting.append(key)
            found.update(dict.fromkeys(outputs))
    stale = [p for p in found if not any(parent in found for parent in p.parents)]  # heatmaps/ holds heatmaps/abmil/
    if not stale:
        return []
    if overwrite:
        return stale
    lines = "\n".join(f"  {key}: {changes[key]}" for key in conflicting)
    listed = ", ".join(p.relative_to(run_dir).as_posix() + "/" * p.is_dir() for p in stale)
    raise ConfigError(
        f"{where}: {run_dir} holds outputs made with other settings than these ({path}):\n{lines}\n"
        f"Outputs made with the old settings: {listed}. Nothing was done: skipping them as complete would mix "
        "two settings in one run. To redo them with these settings, delete them (a rerun redoes only what is "
        "missing) or rerun with --overwrite (removes them, then redoes every stage); or write to a new run folder "
        "(run.out; for wsi-mil demo, another --out)."
    )


def _bag_settings(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(a bag, the config it was tiled with) from RUN_DIR/bags/[<set>/]; None without one that records it."""
    from wsi_mil.store.bags import read_bag

    bags = RunLayout(run_dir).find_bags()
    if not bags:
        return None
    _, bag = bags[0]
    try:
        saved = json.loads(str(read_bag(bag).attrs.get("tiling_config") or "null"))
    except (OSError, ValueError, WsiMilError) as error:
        logger.warning("%s: cannot read its tiling settings (%s)", bag, error)
        return None
    return (bag, saved) if isinstance(saved, dict) else None
