"""Options and helpers shared by the ``wsi-mil`` sub-commands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options

logger = logging.getLogger("wsi_mil")


#: What --config and --set say, in every command that takes them.
CONFIG_HELP = "YAML config, e.g. configs/default.yaml (default: the built-in settings shown here)"
SET_HELP = "override a config key; repeatable, e.g. --set tissue.method=gray_otsu"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, plus ``(default: X)`` after an option that has a default its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, True, [], argparse.SUPPRESS)
            or action.required
        ):
            return text
        return f"{text} (default: %(default)s)"


def configured(text: str, key: str, *, none: str = "") -> str:
    """``text`` with the default of config key ``section.name``, as the config module defines it.

    ``none`` says what an unset (null) value means; a key that defaults to null needs it.
    """
    from wsi_mil.config import Config

    section, name = key.split(".")
    value = getattr(getattr(Config(), section), name)
    if value is None:
        if not none:
            raise ValueError(f"{key} defaults to null: say what that means (none=...)")
        shown = none
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, (tuple, list)):
        shown = " ".join(str(v) for v in value) or none or "none"
    else:
        shown = str(value)
    return f"{text} (default: {shown}; config {key})"


def add_common(parser: argparse.ArgumentParser, *, workers: str = "one per core") -> None:
    """--config, --set, the Dask options (``workers``: what an unset --workers means) and the run flags."""
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    add_dask_options(parser, workers=workers)
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")


def add_dask_options(parser: argparse.ArgumentParser, *, workers: str = "one per core") -> None:
    parser.add_argument(
        "--workers",
        type=options.non_negative_int,
        help=configured(
            "local Dask worker processes; 0: every slide in this process, without Dask",
            "parallel.workers",
            none=workers,
        ),
    )
    parser.add_argument(
        "--scheduler",
        help=configured(
            "address of an existing Dask scheduler, e.g. tcp://host:8786",
            "parallel.scheduler",
            none="a local cluster of --workers processes",
        ),
    )


def parallel_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``parallel`` config section's keys given as --workers / --scheduler."""
    return {k: getattr(args, k) for k in ("workers", "scheduler") if getattr(args, k) is not None}


def add_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    parser.add_argument("--overwrite", action="store_true", help="retrain finished folds instead of resuming")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")


def summarize(records: list[dict[str, Any]], run_dir: Path, stage: str = "tiling") -> int:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do"
    from wsi_mil.run_layout import RunLayout

    logger.warning("%s: %s; manifest: %s", stage, summary, RunLayout(run_dir).manifest)
    return 1 if counts.get("failed") else 0


def add_quiet_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
