"""MIL heads on bags of patch features: registry, training with cross-validation, prediction.

Importing this package imports torch (the heads are torch modules); ``import wsi_mil``
does not import it.
"""

from __future__ import annotations

from wsi_mil.mil.registry import MilOutput, create_mil_model, list_mil_models, mil_model_config

__all__ = ["MilOutput", "create_mil_model", "list_mil_models", "mil_model_config"]
