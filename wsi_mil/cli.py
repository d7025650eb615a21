"""The ``wsi-mil`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsi_mil import __version__, cli_explain, cli_prepare, cli_run, cli_train
from wsi_mil.cli_common import HelpFormatter
from wsi_mil.errors import WsiMilError

logger = logging.getLogger("wsi_mil")


DESCRIPTION = (
    "Whole-slide images to slide predictions and heatmaps: tile slides into patch bags, extract features with a "
    "frozen encoder, cross-validate gated-attention MIL (ABMIL) and ILAM heads, and stitch their per-patch maps "
    "into heatmaps for QuPath, napari and OpenSlide viewers."
)
EPILOG = (
    "Run the stages in the order listed, or all of them from one config file with 'wsi-mil run CONFIG'. "
    "'wsi-mil demo' runs everything on a small built-in cohort. 'wsi-mil COMMAND --help' shows a command's options "
    "with their defaults."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-mil", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"wsi-mil {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # pipeline order: each stage reads what the one before it wrote
    cli_prepare.add_tile(commands)
    cli_prepare.add_extract(commands)
    cli_train.add_train(commands)
    cli_train.add_predict(commands)
    cli_explain.add_heatmap(commands)
    cli_explain.add_evaluate_maps(commands)
    cli_run.add_run(commands)
    cli_run.add_view(commands)
    cli_run.add_demo(commands)
    cli_run.add_encoders(commands)
    for command in commands.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if args.debug else "%(message)s"))
    root = logging.getLogger("wsi_mil")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


#: Commands that write into RUN_DIR and whose library functions take no run lock themselves.
_LOCKED_COMMANDS = frozenset({"train", "predict", "heatmap", "evaluate-maps"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        if args.command in _LOCKED_COMMANDS and Path(args.run_dir).is_dir():  # tile, extract, run: in the library
            from wsi_mil.store.runlock import run_lock

            with run_lock(args.run_dir, f"wsi-mil {args.command}"):
                return int(args.handler(args))
        return int(args.handler(args))
    except WsiMilError as error:
        if args.debug:
            logger.exception("wsi-mil failed")
        else:
            logger.error("error: %s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
