"""What a run config asks of ``wsi-mil run``, checked before any work: its inputs exist, its
names are registered, its labels CSV and fold plan fit the slides (pipeline.py runs the stages)."""

from __future__ import annotations

from pathlib import Path

from wsi_mil.config import Config
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.run_layout import RunLayout


def heads(config: Config) -> list[str]:
    """The heads' folder names under RUN_DIR/models/ (``run.models``, else ``train.name`` or ``train.model``)."""
    return list(config.run.models) or [config.train.name or config.train.model]


def encoder_features_dir(run_dir: Path, config: Config) -> Path:
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
        folder = encoder_features_dir(Path(run.out), config)
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
        folder = encoder_features_dir(Path(str(run.out)), config)
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
