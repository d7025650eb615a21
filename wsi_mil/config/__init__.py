"""Typed configuration: dataclasses with defaults, loaded from YAML, overridden from the CLI.

One module per section (:mod:`~wsi_mil.config.tiling`, :mod:`~wsi_mil.config.extraction`,
:mod:`~wsi_mil.config.training`, :mod:`~wsi_mil.config.heatmaps`,
:mod:`~wsi_mil.config.sections`); loading and validation in :mod:`~wsi_mil.config.loading`.
A field declared :func:`~wsi_mil.config.fields.neutral_field` changes how the work is done, not
what it writes (:func:`neutral_keys`). Every error names the key, the file and what is
allowed, before any work starts. The resolved configuration is written as JSON beside the outputs.
"""

from __future__ import annotations

from wsi_mil.config.extraction import ExtractConfig, ParallelConfig
from wsi_mil.config.fields import AFFECTS_OUTPUTS, DEVICE_CHOICES, check_device, neutral_field
from wsi_mil.config.heatmaps import CAM_METHODS, DEFAULT_CAM_METHODS, HeatmapConfig
from wsi_mil.config.loading import (
    config_from_dict,
    config_to_dict,
    config_to_json,
    load_config,
    neutral_keys,
    parse_override,
)
from wsi_mil.config.sections import SECTIONS, Config, RunConfig
from wsi_mil.config.tiling import DEFAULT_EXTENSIONS, TilingConfig, TissueConfig
from wsi_mil.config.training import HeadOptions, TrainConfig

__all__ = [
    "AFFECTS_OUTPUTS",
    "CAM_METHODS",
    "DEFAULT_CAM_METHODS",
    "DEFAULT_EXTENSIONS",
    "DEVICE_CHOICES",
    "SECTIONS",
    "Config",
    "ExtractConfig",
    "HeadOptions",
    "HeatmapConfig",
    "ParallelConfig",
    "RunConfig",
    "TilingConfig",
    "TissueConfig",
    "TrainConfig",
    "check_device",
    "config_from_dict",
    "config_to_dict",
    "config_to_json",
    "load_config",
    "neutral_field",
    "neutral_keys",
    "parse_override",
]
