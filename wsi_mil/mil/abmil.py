"""Attention-based MIL (Ilse et al. 2018) as CLAM builds it: ``abmil`` (gated) and ``abmil_plain`` (tanh).

input standardization with the fold's training statistics (:mod:`wsi_mil.mil.standardize`);
projection D -> hidden_dim (256; ReLU, dropout 0.25); attention scores with hidden attention_dim (128); softmax
over the bag; z = sum_i a_i h_i; a linear classifier. ``instance_logits`` are that
classifier applied to each instance embedding h_i. Because the classifier is linear
and the weights sum to 1, sum_i a_i instance_logits_i equals the bag logits exactly
(bias included), but unlike ILAM nothing in training makes instance_logits
meaningful on their own, so no ``contribution`` map is written for these heads.
"""

from __future__ import annotations

import torch
from torch import nn

from wsi_mil.mil.instance_loss import InstanceClusterer
from wsi_mil.mil.layers import (
    GatedAttention,
    InstanceEmbedding,
    PlainAttention,
    as_batch,
    masked_softmax,
    pool,
)
from wsi_mil.mil.registry import HeadOptions, MilModelConfig, MilOutput, register_mil_model


class AttentionMIL(InstanceEmbedding):
    def __init__(self, in_dim: int, n_classes: int, options: HeadOptions, *, gated: bool = True) -> None:
        super().__init__()
        hidden = options.hidden_dim
        self.build_embedding(in_dim, options)
        pooling = GatedAttention if gated else PlainAttention
        self.attention = pooling(hidden, options.attention_dim, options.dropout)
        self.classifier = nn.Linear(hidden, n_classes)
        self.clusterer = InstanceClusterer(hidden, n_classes, options.instance_k) if options.instance_loss else None

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        explain: bool = False,
    ) -> MilOutput:
        """features (N, D) or (B, N, D) with mask (B, N); coords are not used."""
        x, _, mask, batched = as_batch(features, coords, mask)
        h = self.embed(x, mask)
        scores = self.attention(h)
        weights = masked_softmax(scores, mask)
        out = MilOutput(
            logits=self.classifier(pool(weights, h)),
            attention_raw=scores,
            attention=weights,
            instance_logits=self.classifier(h),
            embeddings=h,
        )
        return out if batched else out.first()


@register_mil_model(MilModelConfig("abmil", "gated attention MIL (Ilse et al. 2018; CLAM Attn_Net_Gated)"))
def _abmil(in_dim: int, n_classes: int, options: HeadOptions) -> nn.Module:
    return AttentionMIL(in_dim, n_classes, options, gated=True)


@register_mil_model(MilModelConfig("abmil_plain", "ungated (tanh) attention MIL, for comparison"))
def _abmil_plain(in_dim: int, n_classes: int, options: HeadOptions) -> nn.Module:
    return AttentionMIL(in_dim, n_classes, options, gated=False)
