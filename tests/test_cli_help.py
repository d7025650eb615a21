"""What ``wsi-mil --help`` and ``wsi-mil COMMAND --help`` tell a user."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from wsi_mil import cli, cli_common, cli_explain, cli_prepare, cli_run, cli_train
from wsi_mil.cli import build_parser
from wsi_mil.config import Config

PIPELINE_ORDER = ["tile", "extract", "train", "predict", "heatmap", "evaluate-maps", "run", "view", "demo", "encoders"]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_tile_help_from_the_real_command_shows_defaults() -> None:
    for command in (
        [sys.executable, "-m", "wsi_mil", "tile", "--help"],
        [sys.executable, "-m", "wsi_mil.cli", "tile", "--help"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())  # argparse wraps lines
        assert f"(default: {Config().tiling.patch_size}; config tiling.patch_size)" in text
        assert "(default: 0.5; config tiling.tissue_threshold)" in text
        assert "(default: one per core; config parallel.workers)" in text


def test_subcommands_are_listed_in_pipeline_order() -> None:
    assert list(_commands()) == PIPELINE_ORDER
    listed = re.findall(r"^    ([a-z-]+)", build_parser().format_help(), flags=re.MULTILINE)
    assert listed == PIPELINE_ORDER


def test_top_level_help_is_no_module_docstring() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "Whole-slide images to slide predictions and heatmaps" in text
    for module in (cli, cli_common, cli_prepare, cli_train, cli_explain, cli_run):
        docstring = " ".join((module.__doc__ or "").split())
        assert docstring and docstring not in text, module.__name__
    assert "``" not in text and "parses arguments" not in text


@pytest.mark.parametrize("name", PIPELINE_ORDER)
def test_every_option_with_a_value_states_its_default(name: str) -> None:
    """Flags say what they do; every option taking a value says what happens without it."""
    command = _commands()[name]
    assert command.description, f"{name} has no description"
    formatter = command._get_formatter()
    for action in command._actions:
        if not action.option_strings or action.required or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if action.nargs == 0 or isinstance(action, argparse._AppendAction):  # flags, repeatable --set
            continue
        shown = formatter._expand_help(action)
        assert "default" in shown, f"{name} {action.option_strings[0]}: {shown}"


def test_config_backed_defaults_follow_the_config() -> None:
    text = cli_common.configured("patches per batch", "extract.batch_size", none="32 on CPU, 256 on CUDA")
    assert text == "patches per batch (default: 32 on CPU, 256 on CUDA; config extract.batch_size)"
    assert cli_common.configured("x", "extract.encoder").endswith(
        f"(default: {Config().extract.encoder}; config extract.encoder)"
    )
    with pytest.raises(ValueError, match="null"):
        cli_common.configured("x", "extract.batch_size")  # a null default must be explained
