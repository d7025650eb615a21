"""The whole config: one section per stage, plus the ``run`` section of ``wsi-mil run``."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from wsi_mil.config.extraction import ExtractConfig, ParallelConfig
from wsi_mil.config.fields import neutral_field
from wsi_mil.config.heatmaps import HeatmapConfig
from wsi_mil.config.tiling import TilingConfig, TissueConfig
from wsi_mil.config.training import TrainConfig


@dataclass(frozen=True)
class RunConfig:
    """``wsi-mil run``: inputs, run directory, heads and stages. Relative paths are relative
    to the config file."""

    #: Slides to tile: a folder (recursive), one slide, or a CSV with a 'path' column.
    slides: str | None = None
    #: The run directory every stage writes into.
    out: str | None = neutral_field(None)
    #: Labels CSV (slide_id,label[,patient_id][,split]); null: stop after extraction.
    labels: str | None = None
    #: Annotations (<slide_id>.png|.geojson|.xml) for the localization table; null: none.
    masks: str | None = neutral_field(None)
    #: MIL heads to cross-validate, each in models/<head>/; empty: train.model only.
    models: tuple[str, ...] = neutral_field(())
    #: Stages to run, in this order.
    stages: tuple[str, ...] = neutral_field(("tile", "extract", "train", "predict", "heatmap", "evaluate"))

    STAGES: typing.ClassVar[tuple[str, ...]] = ("tile", "extract", "train", "predict", "heatmap", "evaluate")

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in self.STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; allowed: {', '.join(self.STAGES)}")


@dataclass(frozen=True)
class Config:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    run: RunConfig = field(default_factory=RunConfig)


#: Section name -> its dataclass, in file order.
SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
