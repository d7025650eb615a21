"""The frozen encoders CAMs run through, built once per process (a Dask worker explains many slides)."""

from __future__ import annotations

from typing import Any

#: (encoder name, weights id, checkpoint path) -> encoder
ENCODERS: dict[tuple[str, str, str | None], Any] = {}


def encoder_for(feature_attrs: dict[str, Any], checkpoint_path: str | None) -> Any:
    """The frozen encoder that made the features (its name and weights are in the feature file)."""
    from wsi_mil.explain.cam import CamError
    from wsi_mil.features.registry import create_encoder

    name, weights = str(feature_attrs.get("encoder")), str(feature_attrs.get("weights", ""))
    if weights.startswith("checkpoint:") and not checkpoint_path:
        raise CamError(f"the features come from a local checkpoint ({weights}); set extract.checkpoint_path to it")
    key = (name, weights, checkpoint_path)
    if key not in ENCODERS:
        kind = "random" if weights == "random" else "imagenet"
        encoder = create_encoder(
            name, weights=kind, checkpoint_path=checkpoint_path if weights.startswith("checkpoint:") else None
        )
        if weights.startswith("checkpoint:") and encoder.weights.rsplit(":", 1)[-1] != weights.rsplit(":", 1)[-1]:
            raise CamError(
                f"extract.checkpoint_path {checkpoint_path} ({encoder.weights}) is not the checkpoint "
                f"that made the features ({weights}): its contents differ"
            )
        ENCODERS[key] = encoder
    return ENCODERS[key]
