"""Stage 1: tile a folder of slides into patch bags.

A thin script over the library, to read and adapt:

    .venv/bin/python pipelines/01_tile.py /data/slides /data/run --target-mpp 0.5 1.0

Equivalent to ``wsi-mil tile /data/slides --out /data/run --target-mpp 0.5 1.0``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from wsi_mil.config import load_config
from wsi_mil.io.discover import find_slides
from wsi_mil.run_layout import RunLayout
from wsi_mil.tiling import tile_slides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slides", type=Path, help="a slide folder, file, or CSV with a 'path' column")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("--target-mpp", type=float, nargs="+")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = load_config(args.config)
    if args.target_mpp:
        config = replace(config, tiling=replace(config.tiling, target_mpp=tuple(args.target_mpp)))
    if args.workers is not None:
        config = replace(config, parallel=replace(config.parallel, workers=args.workers))

    sources = find_slides([args.slides], extensions=config.tiling.extensions)
    records = tile_slides(sources, args.run_dir, config=config)
    failed = [r for r in records if r["status"] == "failed"]
    logging.info("%d records, %d failed; see %s", len(records), len(failed), RunLayout(args.run_dir).manifest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
