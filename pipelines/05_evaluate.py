"""Stage 5: how well each heatmap map localizes annotated lesions, and how faithful it is.

A thin script over the library, to read and adapt:

    .venv/bin/python pipelines/05_evaluate.py /data/run --masks /data/annotations --model abmil

Equivalent to ``wsi-mil evaluate-maps /data/run --masks /data/annotations --model abmil``.
Needs RUN_DIR/scores/<model>/ (stage 3); the CAM table also uses the heatmap folders
(stage 4); writes RUN_DIR/explanations/<model>/ (explanations.md and CSV tables).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_mil.explain.evaluate import evaluate_maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory with scores/ from stage 3")
    parser.add_argument("--masks", type=Path, help="folder of <slide_id>.png|.geojson|.xml annotations (localization)")
    parser.add_argument("--model", help="which scores/<model>/ folder (needed when there are several)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    result = evaluate_maps(args.run_dir, masks=args.masks, model=args.model)
    logging.info("%s", (result.out / "explanations.md").read_text())
    logging.info("tables: %s", result.out)
    return 1 if any(record["status"] == "failed" for record in result.records) else 0


if __name__ == "__main__":
    sys.exit(main())
