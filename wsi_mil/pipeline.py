"""``wsi-mil run CONFIG``: every stage of a run from one config file.

tile -> extract -> train (each head of ``run.models``) -> predict -> heatmap ->
evaluate (localization against ``run.masks``). Each stage skips the outputs that are
complete and redoes what a killed run left unfinished, so rerunning the same command
resumes; all stages write their rows into the one ``RUN_DIR/manifest.csv``. The
resolved config, paths made absolute, is saved as ``RUN_DIR/run_config.json``.

Every path, head and encoder name is checked before any work starts; errors name the
config key and the file. A rerun into a folder whose ``run_config.json`` differs in a
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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, RunConfig, config_to_json, load_config, neutral_keys
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.run_layout import RUN_CONFIG, RunLayout
from wsi_mil.store.atomic import atomic_output, remove_path
from wsi_mil.store.runlock import run_lock

logger = logging.getLogger(__name__)

STAGE_ORDER = ("tile", "extract", "train", "predict", "heatmap", "evaluate")
#: Keys that change how a run is done, not what it writes: a rerun may change them. Each is
#: declared on its config field (wsi_mil.config.fields.neutral_field). (``run.masks``: the evaluate
#: stage recomputes its tables on every run.)
NEUTRAL_KEYS = neutral_keys()
#: The first stage whose outputs a key shapes (outputs of later stages are made from those).
SECTION_STAGE = {"tiling": "tile", "tissue": "tile", "extract": "extract", "train": "train", "heatmap": "heatmap"}
RUN_KEY_STAGE = {"run.slides": "tile", "run.labels": "train"}


@dataclass
class PipelineResult:
    run_dir: Path
    models: list[str]
    #: Manifest records of the slide stages, per stage.
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Seconds per stage (per head for train/predict/heatmap/evaluate: "train:abmil").
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for records in self.records.values() for r in records)


def load_run_config(
    path: str | Path, *, overrides: dict[str, dict[str, Any]] | None = None, sets: list[str] | None = None
) -> Config:
    """Load ``path`` and make the ``run`` paths absolute (relative ones are relative to the file)."""
    config = load_config(path, overrides=overrides, sets=sets)
    return resolve_paths(config, base=Path(path).resolve().parent)


def resolve_paths(config: Config, *, base: Path) -> Config:
    run = config.run
    absolute: dict[str, Any] = {
        key: str((base / value).resolve())
        for key in ("slides", "out", "labels", "masks")
        if (value := getattr(run, key)) is not None
    }
    return dataclasses.replace(config, run=dataclasses.replace(run, **absolute))


def heads(config: Config) -> list[str]:
    """The heads' folder names under RUN_DIR/models/ (``run.models``, else ``train.name`` or ``train.model``)."""
    return list(config.run.models) or [config.train.name or config.train.model]


def _features_dir(run_dir: Path, config: Config) -> Path:
    """The feature files of this config's encoder: the only ones its heads train on."""
    return RunLayout(run_dir).features_dir(config.extract.encoder)


def check_run_config(config: Config, *, where: str = "config") -> None:
    """Every input the stages need exists, every name is registered: before any work."""
    run = config.run
    stages = set(run.stages)
    if run.out is None:
        raise ConfigError(f"{where}: run.out is not set; give the run directory every stage writes into")
    inputs = (
        ("slides", "tile", "slide file, folder or CSV"),
        ("labels", "train", "labels CSV"),
        ("masks", "evaluate", "annotations folder"),
    )
    for key, stage, kind in inputs:
        value = getattr(run, key)
        if stage not in stages:
            continue
        if value is None and key == "slides":
            raise ConfigError(f"{where}: run.slides is not set; the tile stage needs a {kind}")
        if value is not None and not Path(value).exists():
            raise ConfigError(f"{where}: run.{key} = {value}: no such {kind}")
    if run.masks is not None and Path(run.masks).is_file():
        raise ConfigError(f"{where}: run.masks = {run.masks}: not a folder of <slide_id>.png|.geojson|.xml")
    if stages & {"extract", "train"}:
        from wsi_mil.features.registry import check_weights

        extract = config.extract
        try:
            check_weights(extract.encoder, weights=extract.weights, checkpoint_path=extract.checkpoint_path)
        except WsiMilError as error:
            raise ConfigError(f"{where}: extract.encoder / weights / checkpoint_path: {error}") from error
    if "train" in stages and "extract" not in stages and run.labels is not None:
        folder = _features_dir(Path(run.out), config)
        if not folder.is_dir():
            found = sorted(d.name for d in folder.parent.iterdir() if d.is_dir()) if folder.parent.is_dir() else []
            raise ConfigError(
                f"{where}: the train stage reads {folder} (extract.encoder = {config.extract.encoder}), "
                f"which does not exist; encoders with features there: {', '.join(found) or 'none'}. "
                "Set extract.encoder to one of them, or add the extract stage"
            )
    if stages & {"train", "predict", "heatmap", "evaluate"}:
        from wsi_mil.mil.registry import mil_model_config

        for name in list(run.models) or [config.train.model]:
            try:
                mil_model_config(name)
            except WsiMilError as error:
                raise ConfigError(f"{where}: run.models / train.model: {error}") from error


def check_labels_plan(config: Config, *, where: str = "config") -> None:
    """The labels CSV and the fold plan of the train stage, on the slides this run will have: before any tiling.

    Unreadable files, NaN/empty/case-variant labels, one class, too few patients per class
    for ``train.folds`` and folds unbalanced by patient grouping are errors, advising
    ``--set train.folds=N``.
    """
    from wsi_mil.mil.labels import read_labels
    from wsi_mil.mil.splits import check_fold_plan, fold_option

    run, options = config.run, config.train
    table = read_labels(str(run.labels))
    if "tile" in run.stages:
        from wsi_mil.io.discover import find_slides

        ids = {source.slide_id for source in find_slides([str(run.slides)], extensions=config.tiling.extensions)}
        origin = f"run.slides = {run.slides}"
    else:
        folder = _features_dir(Path(str(run.out)), config)
        ids = (
            {p.stem for p in folder.rglob("*") if p.suffix in (".h5", ".zarr")}
            if folder.is_dir()
            else set(table.labels)
        )
        origin = str(folder)
    labels = {s: label for s, label in table.labels.items() if s in ids}
    if not labels:
        raise ConfigError(
            f"{where}: run.labels = {table.path}: none of its {len(table.labels)} slide ids is a slide "
            f"of {origin}; the slide id is the file name without its extension"
        )
    with fold_option("--set train.folds=N"):
        check_fold_plan(
            labels,
            {s: table.patients[s] for s in labels},
            folds=options.folds,
            seed=options.seed,
            val_fraction=options.val_fraction,
            where=f"{where}: run.labels = {table.path}",
            csv_splits={s: table.splits[s] for s in labels} if table.splits else None,
        )


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
        return [_features_dir(run_dir, config), *layout.per_head_roots()]
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


def _head_config(config: Config, name: str) -> Config:
    """The config that trains head ``name`` into models/<name>/."""
    if not config.run.models:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, model=name, name=None))


def run_pipeline(
    config: Config, *, where: str = "config", overwrite: bool = False, debug: bool = False, progress: bool = True
) -> PipelineResult:
    """Run ``config.run.stages`` in order on ``config.run`` (paths absolute; see :func:`resolve_paths`)."""
    check_run_config(config, where=where)
    if "train" in config.run.stages and config.run.labels is not None:
        check_labels_plan(config, where=where)  # before any tiling: minutes, not hours, into a run
    sources = _find_sources(config, where) if "tile" in config.run.stages else []  # bad inputs stop before any work
    if not overwrite:
        stale_outputs(config, where=where)  # a refused run touches nothing, not even the lock file
    from wsi_mil.mil.splits import fold_option

    with (
        run_lock(Path(str(config.run.out)), "wsi-mil run"),
        fold_option("--set train.folds=N"),
    ):  # one writer per run folder
        return _run_locked(config, sources, where=where, overwrite=overwrite, debug=debug, progress=progress)


def _run_locked(
    config: Config, sources: list[Any], *, where: str, overwrite: bool, debug: bool, progress: bool
) -> PipelineResult:
    run: RunConfig = config.run
    run_dir = Path(str(run.out))
    stale = stale_outputs(config, where=where, overwrite=overwrite)
    if stale:  # before run_config.json changes: a run killed while removing refuses to resume as before
        logger.warning("--overwrite with changed settings: removing %s", ", ".join(map(str, stale)))
        for path in stale:
            remove_path(path)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(RunLayout(run_dir).run_config) as tmp:
        tmp.write_text(config_to_json(config))
    result = PipelineResult(run_dir, heads(config))
    stages = set(run.stages)

    def timed(name: str, work: Any) -> Any:
        started = time.perf_counter()
        logger.info("== %s", name)
        value = work()
        result.seconds[name] = round(time.perf_counter() - started, 1)
        return value

    if "tile" in stages:
        from wsi_mil.tiling.tile import tile_slides

        result.records["tile"] = timed(
            "tile",
            lambda: tile_slides(sources, run_dir, config=config, overwrite=overwrite, debug=debug, progress=progress),
        )
    if "extract" in stages:
        from wsi_mil.features.extract import extract_run

        result.records["extract"] = timed(
            "extract", lambda: extract_run(run_dir, config=config, overwrite=overwrite, debug=debug, progress=progress)
        )
    if run.labels is None:
        logger.warning("run.labels is not set: stopping after extraction")
        return result
    for name in result.models:
        _run_head(
            _head_config(config, name),
            name,
            run_dir,
            result,
            timed,
            overwrite=overwrite,
            debug=debug,
            progress=progress,
        )
    return result


def _find_sources(config: Config, where: str) -> list[Any]:
    from wsi_mil.io.discover import find_slides

    sources = find_slides([str(config.run.slides)], extensions=config.tiling.extensions)
    if not sources:
        raise WsiMilError(
            f"{where}: run.slides = {config.run.slides}: no slides found "
            f"(extensions: {' '.join(config.tiling.extensions)})"
        )
    return sources


def _run_head(
    config: Config,
    name: str,
    run_dir: Path,
    result: PipelineResult,
    timed: Any,
    *,
    overwrite: bool,
    debug: bool,
    progress: bool,
) -> None:
    run, stages = config.run, set(config.run.stages)
    model_dir = RunLayout(run_dir).model_dir(name)
    if "train" in stages:
        from wsi_mil.mil.run import train_run

        # Only this encoder's features: a run folder may also hold another encoder's.
        features = [_features_dir(run_dir, config)]
        timed(
            f"train:{name}",
            lambda: train_run(run_dir, str(run.labels), config=config, features=features, overwrite=overwrite),
        )
    if "predict" in stages:
        from wsi_mil.mil.predict import predict_run

        result.records[f"predict:{name}"] = timed(
            f"predict:{name}", lambda: predict_run(run_dir, model_dir, device=config.train.device, overwrite=overwrite)
        )
    if "heatmap" in stages:
        from wsi_mil.explain.heatmap import heatmap_run

        result.records[f"heatmap:{name}"] = timed(
            f"heatmap:{name}",
            lambda: heatmap_run(
                run_dir, config=config, model=name, overwrite=overwrite, debug=debug, progress=progress
            ),
        )
    if "evaluate" in stages and run.masks is not None:
        from wsi_mil.explain.evaluate import evaluate_maps

        result.records[f"evaluate:{name}"] = timed(
            f"evaluate:{name}", lambda: evaluate_maps(run_dir, masks=str(run.masks), model=name).records
        )
