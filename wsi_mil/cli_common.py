"""Options and helpers shared by the ``wsi-mil`` sub-commands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options

logger = logging.getLogger("wsi_mil")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--workers", type=options.non_negative_int,
                        help="local Dask worker processes (default: one per core; 0: no Dask)")  # fmt: skip
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")


def add_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished folds instead of resuming")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")


def summarize(records: list[dict[str, Any]], run_dir: Path, stage: str = "tiling") -> int:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do"
    logger.warning("%s: %s; manifest: %s", stage, summary, run_dir / "manifest.csv")
    return 1 if counts.get("failed") else 0
