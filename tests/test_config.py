"""Config files load, validate, and name the offending key, file and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_mil.config import Config, config_to_dict, load_config
from wsi_mil.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_documents_exactly_the_defaults() -> None:
    assert config_to_dict(load_config(CONFIGS / "default.yaml")) == config_to_dict(Config())


def test_every_key_in_default_yaml_is_commented() -> None:
    lines = (CONFIGS / "default.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            assert lines[index - 1].strip().startswith("#"), f"key without a comment: {line.strip()}"


def test_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  target_mpp: 1.0\n  patch_size: 224\n")
    config = load_config(path, overrides={"tiling": {"patch_size": 512}}, sets=["tiling.target_mpp=[0.25, 0.5]"])
    assert config.tiling.target_mpp == (0.25, 0.5) and config.tiling.patch_size == 512


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("tiling:\n  patchsize: 256\n", ["tiling.patchsize", "allowed", "patch_size"]),
        ("tiling:\n  patch_size: big\n", ["tiling.patch_size", "int"]),
        ("tiling:\n  bag_format: parquet\n", ["tiling.bag_format", "h5, zarr"]),
        ("tissue:\n  method: deep\n", ["tissue.method", "hsv_otsu"]),
        ("tiling:\n  overlap: 1.5\n", ["overlap", "[0, 1)"]),
        ("extract:\n  batch: 2\n", ["extract.batch", "batch_size"]),
        ("training:\n  epochs: 2\n", ["unknown section", "training"]),
    ],
)
def test_errors_name_key_file_and_allowed_values(tmp_path: Path, yaml_text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_and_malformed_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(sets=["target_mpp=1"])
