"""Stage 4: stitch the per-patch scores of every slide into viewer-ready heatmaps.

A thin script over the library, to read and adapt:

    .venv/bin/python pipelines/04_heatmap.py /data/run --model abmil

Equivalent to ``wsi-mil heatmap /data/run --model abmil``. Needs RUN_DIR/scores/<model>/
from ``wsi-mil predict``; writes RUN_DIR/heatmaps/<model>/<slide_id>/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_mil.config import load_config
from wsi_mil.explain.heatmap import heatmap_run
from wsi_mil.run_layout import RunLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory with scores/ from wsi-mil predict")
    parser.add_argument("--config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("--model", help="which scores/<model>/ folder (needed when there are several)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = load_config(args.config)
    records = heatmap_run(args.run_dir, config=config, model=args.model)
    failed = [r for r in records if r["status"] == "failed"]
    logging.info("%d slides, %d failed; see %s", len(records), len(failed), RunLayout(args.run_dir).manifest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
