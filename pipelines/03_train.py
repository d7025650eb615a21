"""Stage 3: cross-validate a MIL head on slide labels, then score the slides for heatmaps.

A thin script over the library, to read and adapt:

    .venv/bin/python pipelines/03_train.py /data/run --labels labels.csv --model ilam

Equivalent to ``wsi-mil train /data/run --labels labels.csv --model ilam`` followed by
``wsi-mil predict /data/run --model-dir /data/run/models/ilam``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_mil.config import load_config
from wsi_mil.mil.predict import predict_run
from wsi_mil.mil.run import model_dir_for, train_run
from wsi_mil.run_layout import RunLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory with features/ from stage 2")
    parser.add_argument("--labels", required=True, type=Path, help="CSV: slide_id,label[,patient_id][,split]")
    parser.add_argument("--config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("--model", help="abmil, abmil_plain or ilam")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = {k: v for k, v in {"model": args.model, "device": args.device}.items() if v is not None}
    config = load_config(args.config, overrides={"train": overrides})
    train_run(args.run_dir, args.labels, config=config)
    model_dir = model_dir_for(args.run_dir, config)
    logging.info("%s", (model_dir / "summary.md").read_text())
    records = predict_run(args.run_dir, model_dir, device=config.train.device)
    failed = [r for r in records if r["status"] == "failed"]
    scores = RunLayout(args.run_dir).scores_dir(model_dir.name)
    logging.info("%d slides scored, %d failed; see %s", len(records), len(failed), scores)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
