"""The MIL head registry: ``create_mil_model(name, in_dim=..., n_classes=..., **options)``, after timm.

Every head maps one bag, features (N, D) and coords (N, 2), or a padded batch of bags,
features (B, N, D), coords (B, N, 2) and ``mask`` (B, N), to a :class:`MilOutput`, so the
training loop and ``predict`` never branch on a head's name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsi_mil.errors import WsiMilError

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


@dataclass(frozen=True)
class HeadOptions:
    """Options shared by the heads (the ``train`` config keys of the same names)."""

    #: Standardize input features per channel with statistics set from the training instances.
    standardize: bool = True
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.25
    #: Residual squeeze-excitation over the feature channels of the instance embeddings.
    channel_attention: bool = False
    #: CLAM's instance clustering loss on the top-k / bottom-k attended instances.
    instance_loss: bool = False
    instance_k: int = 8
    #: ILAM only: a transformer over instances before the attention branch.
    transformer: bool = False
    transformer_layers: int = 1
    transformer_heads: int = 4
    #: Bags longer than this attend within raster-ordered bands of this many patches.
    transformer_max_instances: int = 4096


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
        fields: dict[str, Any] = {f.name: None if (v := getattr(self, f.name)) is None else v[0]
                                  for f in dataclasses.fields(self)}  # fmt: skip
        return MilOutput(**fields)


Builder = Callable[[int, int, HeadOptions], "torch.nn.Module"]
_REGISTRY: dict[str, tuple[MilModelConfig, Builder]] = {}


def register_mil_model(config: MilModelConfig) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise ValueError(f"MIL head {config.name!r} registered twice")
        _REGISTRY[config.name] = (config, builder)
        return builder

    return decorate


def _load_entries() -> None:
    import wsi_mil.mil.abmil
    import wsi_mil.mil.ilam  # noqa: F401


def list_mil_models(pattern: str = "*") -> list[str]:
    _load_entries()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def mil_model_config(name: str) -> MilModelConfig:
    _load_entries()
    if name not in _REGISTRY:
        raise MilModelError(f"unknown MIL head {name!r}; choose one of {', '.join(list_mil_models())}")
    return _REGISTRY[name][0]


def head_options(**options: Any) -> HeadOptions:
    """Build :class:`HeadOptions`, ignoring nothing: an unknown key is an error naming the allowed ones."""
    names = {f.name for f in dataclasses.fields(HeadOptions)}
    unknown = set(options) - names
    if unknown:
        raise MilModelError(f"unknown MIL head option(s) {sorted(unknown)}; allowed: {', '.join(sorted(names))}")
    return HeadOptions(**options)


def create_mil_model(name: str, *, in_dim: int, n_classes: int, **options: Any) -> torch.nn.Module:
    """A freshly initialized head for ``in_dim``-d features and ``n_classes`` >= 2 classes."""
    config = mil_model_config(name)
    opts = head_options(**options)
    if n_classes < 2:
        raise MilModelError(f"{name}: needs at least 2 classes, got {n_classes}")
    if opts.transformer and not config.supports_transformer:
        supported = [n for n in list_mil_models() if _REGISTRY[n][0].supports_transformer]
        raise MilModelError(f"{name}: the transformer option is for {', '.join(supported)} only; set transformer: false")
    model = _REGISTRY[name][1](in_dim, n_classes, opts)
    model.mil_config = config  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return model
