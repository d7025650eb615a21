"""Encoders built and frozen once per process (a Dask worker extracts many slides), and the
one check of a local checkpoint before the first slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_mil.config import ExtractConfig

_ENCODER_CACHE: dict[tuple, Any] = {}


def cached_encoder(config: ExtractConfig) -> Any:
    """The encoder of ``config``, built once per process."""
    from wsi_mil.features.registry import create_encoder

    key = (config.encoder, config.weights, config.checkpoint_path)
    if key not in _ENCODER_CACHE:
        _ENCODER_CACHE[key] = create_encoder(
            config.encoder, weights=config.weights, checkpoint_path=config.checkpoint_path
        )
    return _ENCODER_CACHE[key]


def check_checkpoint(
    encoder: str,
    checkpoint_path: str | Path | None,
    *,
    weights: str = "imagenet",
    made_with: str = "",
    keep: bool = False,
) -> None:
    """Load ``checkpoint_path`` into ``encoder`` once, before the first slide: an unreadable, unsafe
    (pickled code) or ill-fitting checkpoint is one :class:`EncoderError`, not one failure per slide.

    ``made_with``: the ``weights`` id of existing features (``checkpoint:<name>:<sha>``); a checkpoint
    file with another hash is refused (it would explain features it did not make). ``keep``: keep the
    loaded encoder for this process's extraction (else it is dropped; Dask workers load their own).
    """
    from wsi_mil.features.registry import EncoderError

    if checkpoint_path is None:
        if made_with.startswith("checkpoint:"):
            raise EncoderError(
                f"the features were made with a local checkpoint ({made_with}); "
                "give that file as extract.checkpoint_path (--checkpoint-path)"
            )
        return
    path = Path(checkpoint_path)
    if made_with.startswith("checkpoint:"):
        from wsi_mil.features.weights import file_digest

        digest = made_with.rsplit(":", 1)[-1]
        if path.is_file() and file_digest(path, len(digest)) != digest:
            raise EncoderError(
                f"{path}: not the checkpoint the features were made with ({made_with}; this file's "
                f"hash is {file_digest(path, len(digest))}); give that file as extract.checkpoint_path"
            )
    options = ExtractConfig(encoder=encoder, weights=weights, checkpoint_path=str(checkpoint_path))
    try:
        cached_encoder(options)
    except EncoderError as error:
        message = " ".join(str(error).split())  # torch's messages span paragraphs: one line in the log
        raise EncoderError(f"{message} (checked once, before any slide: nothing was done)") from error
    if not keep:
        _ENCODER_CACHE.pop((options.encoder, options.weights, options.checkpoint_path), None)


def frozen_encoder(encoder: Any, example: Any, device: Any, mode: str) -> Any:
    """``encoder`` frozen for inference on ``device`` for batches shaped like ``example``, once per process."""
    from wsi_mil.features.freeze import optimize_for_inference

    key = ("frozen", encoder.name, encoder.weights, str(device), mode, tuple(example.shape[1:]))
    if key not in _ENCODER_CACHE:
        _ENCODER_CACHE[key] = optimize_for_inference(encoder.model, example, device=device, mode=mode)
    return _ENCODER_CACHE[key]
