"""What config fields declare: whether a key changes outputs (on the field, not in a list),
one device check for every device key, one set of head defaults, one CAM method list."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_mil.config import (
    AFFECTS_OUTPUTS,
    CAM_METHODS,
    DEFAULT_CAM_METHODS,
    SECTIONS,
    Config,
    HeadOptions,
    HeatmapConfig,
    TrainConfig,
    config_from_dict,
    config_to_json,
    neutral_keys,
)
from wsi_mil.errors import ConfigError

CONFIG_PACKAGE = Path(__file__).resolve().parents[1] / "wsi_mil" / "config"


def _field(key: str) -> dataclasses.Field:
    section, name = key.split(".")
    return next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def test_neutral_keys_are_the_fields_that_say_so() -> None:
    from wsi_mil.pipeline_resume import NEUTRAL_KEYS

    keys = neutral_keys()
    assert keys == NEUTRAL_KEYS
    assert {"heatmap.cam_device", "extract.device", "train.device", "parallel.workers", "run.out"} <= keys
    assert not {"tiling.patch_size", "extract.encoder", "train.hidden_dim", "heatmap.cam_methods"} & keys
    for key in keys:
        assert _field(key).metadata[AFFECTS_OUTPUTS] is False, key


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("heatmap", {"cam_device": "cpu"}),
        ("extract", {"batch_size": 7, "threads": 1}),
        ("train", {"read_threads": 3, "memory_gb": 1.0}),
        ("parallel", {"workers": 5}),
    ],
)
def test_a_neutral_change_leaves_the_run_config_unchanged(section: str, values: dict) -> None:
    from wsi_mil.pipeline_resume import changed_keys

    saved = json.loads(config_to_json(Config()))  # as run_config.json holds it
    assert changed_keys(saved, config_from_dict({section: values})) == {}


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("tiling", "patch_size", 224),
        ("train", "hidden_dim", 128),
        ("heatmap", "cam_methods", ["gradcam"]),
        ("heatmap", "cam_ig_steps", 8),
    ],
)
def test_an_output_changing_key_is_reported(section: str, key: str, value: object) -> None:
    from wsi_mil.pipeline_resume import changed_keys

    saved = json.loads(config_to_json(Config()))  # as run_config.json holds it
    changed = changed_keys(saved, config_from_dict({section: {key: value}}))
    assert changed == {f"{section}.{key}": (saved[section][key], value)}


@pytest.mark.parametrize("section", ["extract", "train", "heatmap"])
@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:", "CPU"])
def test_every_device_key_is_checked_alike(section: str, value: str) -> None:
    key = "cam_device" if section == "heatmap" else "device"
    with pytest.raises(ConfigError, match=rf"{key} must be auto \(cuda when available\), cpu, cuda or cuda:N"):
        config_from_dict({section: {key: value}})
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        assert getattr(getattr(config_from_dict({section: {key: good}}), section), key) == good


def test_a_bad_cam_device_is_a_config_error_before_any_work(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_mil.cli",
            "heatmap",
            str(tmp_path),
            "--model",
            "abmil",
            "--set",
            "heatmap.cam_device=gpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "cam_device must be auto" in result.stderr and "'gpu'" in result.stderr and "Traceback" not in result.stderr


def test_head_defaults_are_defined_once() -> None:
    from wsi_mil.mil.registry import HeadOptions as RegistryHeadOptions
    from wsi_mil.mil.registry import head_options

    assert RegistryHeadOptions is HeadOptions and issubclass(TrainConfig, HeadOptions)
    train = TrainConfig()
    assert dataclasses.asdict(head_options()) == {
        f.name: getattr(train, f.name) for f in dataclasses.fields(HeadOptions)
    }


def test_one_cam_method_list_and_one_default() -> None:
    assert HeatmapConfig().cam_methods == DEFAULT_CAM_METHODS and set(DEFAULT_CAM_METHODS) < set(CAM_METHODS)
    with pytest.raises(ConfigError, match="allowed: " + ", ".join(CAM_METHODS).replace("+", r"\+")):
        config_from_dict({"heatmap": {"cam_methods": ["gradcam", "nonsense"]}})


def test_config_files_stay_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in CONFIG_PACKAGE.glob("*.py")}
    assert sizes and max(sizes.values()) < 400, sizes
