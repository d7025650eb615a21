"""``wsi-mil run CONFIG``: every stage of a run from one config file.

tile -> extract -> train (each head of ``run.models``) -> predict -> heatmap ->
evaluate (localization against ``run.masks``). Each stage skips the outputs that are
complete and redoes what a killed run left unfinished, so rerunning the same command
resumes; all stages write their rows into the one ``RUN_DIR/manifest.csv``. The
resolved config, paths made absolute, is saved as ``RUN_DIR/run_config.json``.

Every path, head and encoder name is checked before any work starts; errors name the
config key and the file (pipeline_config.py). A rerun into a folder holding outputs made
with other settings is refused before any work, or with ``overwrite`` those outputs are
removed first (pipeline_resume.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, RunConfig, config_to_json, load_config
from wsi_mil.errors import WsiMilError
from wsi_mil.pipeline_config import check_labels_plan, check_run_config, encoder_features_dir, heads
from wsi_mil.pipeline_resume import stale_outputs
from wsi_mil.run_layout import RunLayout
from wsi_mil.store.atomic import atomic_output, remove_path
from wsi_mil.store.runlock import run_lock

logger = logging.getLogger(__name__)


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
        features = [encoder_features_dir(run_dir, config)]
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
