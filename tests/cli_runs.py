"""The train and predict steps many end-to-end tests share, through the real CLI."""

from __future__ import annotations

from pathlib import Path

from wsi_mil.cli import main


def train_and_predict(run: Path, labels: Path, *, model: str = "abmil", epochs: int = 1) -> None:
    """``wsi-mil train`` (2 folds, CPU, no carve-out) then ``wsi-mil predict`` of that head; both must exit 0."""
    train = ["train", str(run), "--labels", str(labels), "--model", model, "--folds", "2", "--epochs", str(epochs)]
    settings = ["--set", "train.min_epochs=1", "--set", "train.val_fraction=0"]
    assert main([*train, "--device", "cpu", *settings, "--quiet"]) == 0
    model_dir = run / "models" / model
    assert main(["predict", str(run), "--model-dir", str(model_dir), "--device", "cpu", "--quiet"]) == 0
