"""Stage 2: extract features of every bag of a run.

A thin script over the library, to read and adapt:

    .venv/bin/python pipelines/02_extract.py /data/run --encoder efficientnet_lite0

Equivalent to ``wsi-mil extract /data/run --encoder efficientnet_lite0``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_mil.config import load_config
from wsi_mil.features.extract import extract_run
from wsi_mil.run_layout import RunLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory with bags/ from stage 1")
    parser.add_argument("--config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("--encoder", help="a registered encoder or timm:<name>")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = {k: v for k, v in {"encoder": args.encoder, "device": args.device}.items() if v is not None}
    config = load_config(args.config, overrides={"extract": overrides})
    records = extract_run(args.run_dir, config=config)
    failed = [r for r in records if r["status"] == "failed"]
    logging.info("%d slides, %d failed; see %s", len(records), len(failed), RunLayout(args.run_dir).manifest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
