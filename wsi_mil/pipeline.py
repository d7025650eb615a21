"""``wsi-mil run CONFIG``: every stage of a run from one config file.

tile -> extract -> train (each head of ``run.models``) -> predict -> heatmap ->
evaluate (localization against ``run.masks``). Each stage skips the outputs that are
complete and redoes what a killed run left unfinished, so rerunning the same command
resumes; all stages write their rows into the one ``RUN_DIR/manifest.csv``. The
resolved config, paths made absolute, is saved as ``RUN_DIR/run_config.json``.

Every path, head and encoder name is checked before any work starts; errors name the
config key and the file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, RunConfig, config_to_json, load_config
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


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


def load_run_config(path: str | Path, *, overrides: dict[str, dict[str, Any]] | None = None,
                    sets: list[str] | None = None) -> Config:  # fmt: skip
    """Load ``path`` and make the ``run`` paths absolute (relative ones are relative to the file)."""
    config = load_config(path, overrides=overrides, sets=sets)
    return resolve_paths(config, base=Path(path).resolve().parent)


def resolve_paths(config: Config, *, base: Path) -> Config:
    run = config.run
    absolute = {key: str((base / value).resolve()) for key in ("slides", "out", "labels", "masks")
                if (value := getattr(run, key)) is not None}  # fmt: skip
    return dataclasses.replace(config, run=dataclasses.replace(run, **absolute))


def heads(config: Config) -> list[str]:
    return list(config.run.models) or [config.train.model]


def check_run_config(config: Config, *, where: str = "config") -> None:
    """Every input the stages need exists, every name is registered: before any work."""
    run = config.run
    stages = set(run.stages)
    if run.out is None:
        raise ConfigError(f"{where}: run.out is not set; give the run directory every stage writes into")
    inputs = (("slides", "tile", "slide file, folder or CSV"), ("labels", "train", "labels CSV"),
              ("masks", "evaluate", "annotations folder"))  # fmt: skip
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
    if "extract" in stages:
        from wsi_mil.features.registry import encoder_config

        try:
            encoder_config(config.extract.encoder)
        except WsiMilError as error:
            raise ConfigError(f"{where}: extract.encoder: {error}") from error
    if stages & {"train", "predict", "heatmap", "evaluate"}:
        from wsi_mil.mil.registry import mil_model_config

        for name in heads(config):
            try:
                mil_model_config(name)
            except WsiMilError as error:
                raise ConfigError(f"{where}: run.models / train.model: {error}") from error


def _head_config(config: Config, name: str) -> Config:
    """The config that trains head ``name`` into models/<name>/."""
    if not config.run.models:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, model=name, name=None))


def run_pipeline(config: Config, *, where: str = "config", overwrite: bool = False, debug: bool = False,
                 progress: bool = True) -> PipelineResult:  # fmt: skip
    """Run ``config.run.stages`` in order on ``config.run`` (paths absolute; see :func:`resolve_paths`)."""
    check_run_config(config, where=where)
    run: RunConfig = config.run
    run_dir = Path(str(run.out))
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(run_dir / RUN_CONFIG) as tmp:
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
        from wsi_mil.io.discover import find_slides
        from wsi_mil.tiling.tile import tile_slides

        sources = find_slides([str(run.slides)], extensions=config.tiling.extensions)
        if not sources:
            raise WsiMilError(f"{where}: run.slides = {run.slides}: no slides found "
                              f"(extensions: {' '.join(config.tiling.extensions)})")  # fmt: skip
        result.records["tile"] = timed("tile", lambda: tile_slides(sources, run_dir, config=config, overwrite=overwrite,
                                                                  debug=debug, progress=progress))  # fmt: skip
    if "extract" in stages:
        from wsi_mil.features.extract import extract_run

        result.records["extract"] = timed("extract", lambda: extract_run(run_dir, config=config, overwrite=overwrite,
                                                                         debug=debug, progress=progress))  # fmt: skip
    if run.labels is None:
        logger.warning("run.labels is not set: stopping after extraction")
        return result
    for name in result.models:
        _run_head(_head_config(config, name), name, run_dir, result, timed, overwrite=overwrite, debug=debug,
                  progress=progress)  # fmt: skip
    return result


def _run_head(config: Config, name: str, run_dir: Path, result: PipelineResult, timed: Any, *, overwrite: bool,
              debug: bool, progress: bool) -> None:  # fmt: skip
    run, stages = config.run, set(config.run.stages)
    model_dir = run_dir / "models" / name
    if "train" in stages:
        from wsi_mil.mil.run import train_run

        timed(f"train:{name}", lambda: train_run(run_dir, str(run.labels), config=config, overwrite=overwrite))
    if "predict" in stages:
        from wsi_mil.mil.predict import predict_run

        result.records[f"predict:{name}"] = timed(f"predict:{name}", lambda: predict_run(
            run_dir, model_dir, device=config.train.device, overwrite=overwrite))  # fmt: skip
    if "heatmap" in stages:
        from wsi_mil.explain.heatmap import heatmap_run

        result.records[f"heatmap:{name}"] = timed(f"heatmap:{name}", lambda: heatmap_run(
            run_dir, config=config, model=name, overwrite=overwrite, debug=debug, progress=progress))  # fmt: skip
    if "evaluate" in stages and run.masks is not None:
        from wsi_mil.explain.evaluate import evaluate_maps

        timed(f"evaluate:{name}", lambda: evaluate_maps(run_dir, masks=str(run.masks), model=name))
