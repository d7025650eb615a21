"""The ``train`` and ``predict`` sub-commands: MIL heads on feature files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options
from wsi_mil.cli_common import add_stage_options, configured, summarize

logger = logging.getLogger("wsi_mil")


def add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="cross-validate a MIL head on slide labels",
        description="Train and cross-validate a MIL head (abmil, abmil_plain, ilam) on the feature files of RUN_DIR "
        "(or --features) with slide labels; writes RUN_DIR/models/<name>/.",
    )
    train.add_argument(
        "run_dir", type=Path, help="run directory (features/ from wsi-mil extract; models/ is written here)"
    )
    train.add_argument("--labels", required=True, type=Path, help="CSV: slide_id,label[,patient_id][,split]")
    train.add_argument("--model", help=configured("MIL head: abmil, abmil_plain or ilam", "train.model"))
    train.add_argument(
        "--name", help=configured("output folder under RUN_DIR/models/", "train.name", none="the model name")
    )
    train.add_argument(
        "--features",
        type=Path,
        nargs="+",
        default=[],
        help="feature folders instead of RUN_DIR/features (also CLAM h5_files/pt_files folders) "
        "(default: RUN_DIR/features/<encoder>)",
    )
    train.add_argument(
        "--folds", type=options.fold_count, help=configured("k of stratified k-fold cross-validation", "train.folds")
    )
    train.add_argument(
        "--repeats",
        type=options.positive_int,
        help=configured("rounds of k-fold cross-validation, each with its own fold seed", "train.repeats"),
    )
    train.add_argument(
        "--epochs",
        type=options.positive_int,
        help=configured("training epochs (the maximum under early stopping)", "train.epochs"),
    )
    train.add_argument(
        "--seed", type=options.any_int, help=configured("seed of folds, weights and sampling", "train.seed")
    )
    train.add_argument("--device", help=configured("auto (CUDA when available), cpu, cuda or cuda:N", "train.device"))
    add_stage_options(train)
    train.set_defaults(handler=_run_train)


def add_predict(commands: Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="score slides with trained heads for the heatmap stage",
        description="Score the feature files of RUN_DIR with the folds of --model-dir: slide probabilities and "
        "per-patch maps in RUN_DIR/scores/<name>/<slide_id>.h5. Slides of the training CV are scored by the "
        "fold that held them out; others by the mean over folds.",
    )
    predict.add_argument("run_dir", type=Path, help="run directory with features/ (scores/ is written here)")
    predict.add_argument("--model-dir", required=True, type=Path, help="RUN_DIR/models/<name> of a wsi-mil train run")
    predict.add_argument(
        "--features",
        type=Path,
        nargs="+",
        default=[],
        help="feature folders instead of RUN_DIR/features "
        "(default: RUN_DIR/features/<the set the model was trained on>)",
    )
    predict.add_argument("--slides", nargs="+", help="only these slide ids (default: every slide with features)")
    predict.add_argument("--all-folds", action="store_true", help="average every fold, also for slides of the CV")
    predict.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    predict.add_argument("--overwrite", action="store_true", help="redo score files that already exist")
    predict.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    predict.add_argument("--quiet", action="store_true", help="warnings and errors only")
    predict.set_defaults(handler=_run_predict)


def _run_train(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.mil.run import model_dir_for, train_run

    train = {
        k: getattr(args, k)
        for k in ("model", "name", "folds", "repeats", "epochs", "seed", "device")
        if getattr(args, k) is not None
    }
    config = load_config(args.config, overrides={"train": train}, sets=args.set)
    train_run(args.run_dir, args.labels, config=config, features=args.features, overwrite=args.overwrite)
    model_dir = model_dir_for(args.run_dir, config)
    logger.warning("training done: %s", model_dir / "summary.md")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from wsi_mil.mil.predict import predict_run

    records = predict_run(
        args.run_dir,
        args.model_dir,
        features=args.features,
        device=args.device,
        all_folds=args.all_folds,
        slide_ids=args.slides,
        overwrite=args.overwrite,
    )
    return summarize(records, args.run_dir, "prediction")
