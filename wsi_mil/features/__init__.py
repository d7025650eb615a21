"""Feature extraction: the encoder registry, patch reading, and the extraction stage."""

from __future__ import annotations

from wsi_mil.features.registry import Encoder, EncoderConfig, create_encoder, encoder_config, list_encoders

__all__ = ["Encoder", "EncoderConfig", "create_encoder", "encoder_config", "list_encoders"]
