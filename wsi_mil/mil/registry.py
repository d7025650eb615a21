"""The MIL head registry: ``create_mil_model(name, in_dim=..., n_classes=..., **options)``, after timm.

Every head maps one bag, features (N, D) and coords (N, 2), or a padded batch of bags,
features (B, N, D), coords (B, N, 2) and ``mask`` (B, N), to a :class:`MilOutput`, so the
training loop and ``predict`` never branch on a head's name. The ``options`` are
:class:`~wsi_mil.config.HeadOptions`, defined once in the config (the ``train`` keys of the
same names); the registry itself is the generic :class:`wsi_mil.registry.Registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsi_mil.config import HeadOptions
from wsi_mil.errors import WsiMilError
from wsi_mil.registry import Registry

if TYPE_CHECKING:
    import torch


class MilModelError(WsiMilError, ValueError):
    """Unknown head, unknown option, or an option the head does not support."""


@dataclass(frozen=True)
class MilModelConfig:
    """What the rest of the pipeline needs to know about a head."""

    name: str
    description: str
    #: Writes ``contribution`` maps m_i^c = a_i s_i^c (exact parts of the bag logit).
    has_contribution: bool = False
    #: Accepts ``transformer=True`` (instance context with attention rollout).
    supports_transformer: bool = False


@dataclass
class MilOutput:
    """One bag's outputs. N instances, C classes, E embedding channels; for a batch of B
    bags every tensor has a leading B dimension (and ``relevance`` covers padding with 0)."""

    logits: torch.Tensor  #: (C,) bag logits
    attention_raw: torch.Tensor  #: (N,) pre-softmax attention scores
    attention: torch.Tensor  #: (N,) softmax weights
    instance_logits: torch.Tensor  #: (N, C)
    embeddings: torch.Tensor  #: (N, E) what attention pools (for the instance loss)
    contribution: torch.Tensor | None = None  #: (N, C) ILAM: a_i s_i^c
    global_logits: torch.Tensor | None = None  #: (C,) ILAM: W_g z + b
    relevance: torch.Tensor | None = None  #: (N,) attention rollout, when asked and available

    def first(self) -> MilOutput:
        """The batch's only bag, without the batch dimension."""
        fields: dict[str, Any] = {
            f.name: None if (v := getattr(self, f.name)) is None else v[0] for f in dataclasses.fields(self)
        }
        return MilOutput(**fields)


Builder = Callable[[int, int, HeadOptions], "torch.nn.Module"]


def _load_entries() -> None:
    import wsi_mil.mil.abmil
    import wsi_mil.mil.ilam  # noqa: F401


#: Every MIL head by name.
MIL_MODELS: Registry[MilModelConfig, Builder] = Registry("MIL head", error=MilModelError, load=_load_entries)


def register_mil_model(config: MilModelConfig) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``(in_dim, n_classes, options) -> module`` under ``config.name``."""
    return MIL_MODELS.register(config.name, config)


def list_mil_models(pattern: str = "*") -> list[str]:
    return MIL_MODELS.names(pattern)


def mil_model_config(name: str) -> MilModelConfig:
    return MIL_MODELS.get(name).config


def head_options(**options: Any) -> HeadOptions:
    """Build :class:`HeadOptions`, ignoring nothing: an unknown key is an error naming the allowed ones."""
    names = {f.name for f in dataclasses.fields(HeadOptions)}
    unknown = set(options) - names
    if unknown:
        raise MilModelError(f"unknown MIL head option(s) {sorted(unknown)}; allowed: {', '.join(sorted(names))}")
    return HeadOptions(**options)


def create_mil_model(name: str, *, in_dim: int, n_classes: int, **options: Any) -> torch.nn.Module:
    """A freshly initialized head for ``in_dim``-d features and ``n_classes`` >= 2 classes."""
    entry = MIL_MODELS.get(name)
    config = entry.config
    opts = head_options(**options)
    if n_classes < 2:
        raise MilModelError(f"{name}: needs at least 2 classes, got {n_classes}")
    if opts.transformer and not config.supports_transformer:
        supported = [n for n in list_mil_models() if mil_model_config(n).supports_transformer]
        raise MilModelError(
            f"{name}: the transformer option is for {', '.join(supported)} only; set transformer: false"
        )
    model = entry.build(in_dim, n_classes, opts)
    model.mil_config = config  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return model
