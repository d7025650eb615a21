"""ILAM, Integrated Latent and Attention Mapping (ARCHITECTURE.md section 4; our definition).

- the input standardized per channel with the fold's training statistics (a buffer of
  the head, :mod:`wsi_mil.mil.standardize`);
- shared projection phi_i = phi(h_i), D -> hidden_dim (256; ReLU, dropout), optionally re-weighted
  by residual channel attention;
- latent branch: instance logits s_i = W_s phi_i (N, C), what each patch says;
- attention branch: gated attention a_i = softmax_i(score(c_i)), where c_i = phi_i, or,
  with ``transformer=True``, c_i = the output of a small transformer over the bag's
  instances with a 2D positional encoding of their grid positions (global context);
  its attention rollout, weighted by a, gives a global relevance r_i;
- integration: y = sum_i a_i s_i + W_g z + b with z = sum_i a_i phi_i, so
  m_i^c = a_i s_i^c is each patch's exact signed contribution to the logit of class c
  and y - sum_i m_i = W_g z + b (``global_logits``).

The latent branch and z read phi_i, not the transformer's output: s_i stays a local
statement about patch i (context only decides how much it counts), which is what makes
the latent map localize. The transformer is off by default: on CPU an epoch with it
costs about 6x one without (2,000 instances per bag, BENCHMARKS.md), and long bags
attend within bands of ``transformer_max_instances`` (see ``InstanceContext``).
"""

from __future__ import annotations

import torch
from torch import nn

from wsi_mil.mil.instance_loss import InstanceClusterer
from wsi_mil.mil.layers import (
    GatedAttention,
    InstanceContext,
    InstanceEmbedding,
    as_batch,
    masked_softmax,
    pool,
)
from wsi_mil.mil.registry import HeadOptions, MilModelConfig, MilOutput, register_mil_model


class ILAM(InstanceEmbedding):
    def __init__(self, in_dim: int, n_classes: int, options: HeadOptions) -> None:
        super().__init__()
        hidden = options.hidden_dim
        self.build_embedding(in_dim, options)
        self.context = None
        if options.transformer:
            self.context = InstanceContext(
                hidden,
                layers=options.transformer_layers,
                heads=options.transformer_heads,
                dropout=0.1,
                max_instances=options.transformer_max_instances,
            )
        self.attention = GatedAttention(hidden, options.attention_dim, options.dropout)
        self.latent = nn.Linear(hidden, n_classes, bias=False)  # W_s
        self.global_head = nn.Linear(hidden, n_classes)  # W_g, b
        self.clusterer = InstanceClusterer(hidden, n_classes, options.instance_k) if options.instance_loss else None

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        explain: bool = False,
    ) -> MilOutput:
        """features (N, D), coords (N, 2); or a padded batch (B, N, D), (B, N, 2) with mask (B, N)."""
        x, coords, mask, batched = as_batch(features, coords, mask)
        phi = self.embed(x, mask)
        rollouts: list = []
        context = phi
        if self.context is not None:
            context, rollouts = self.context.forward_batch(phi, coords, mask, rollout=explain)
        scores = self.attention(context)
        weights = masked_softmax(scores, mask)
        s = self.latent(phi)
        contribution = weights.unsqueeze(-1) * s
        global_logits = self.global_head(pool(weights, phi))
        relevance = None
        if any(rollouts):
            # r_j = sum_i a_i R_ij: how much patch j feeds the attended tokens (sums to 1 per bag).
            relevance = torch.zeros_like(weights)
            for b, bag_rollouts in enumerate(rollouts):
                for index, joint in bag_rollouts:
                    relevance[b, index] = weights[b, index] @ joint
        out = MilOutput(
            logits=contribution.sum(dim=1) + global_logits,
            attention_raw=scores,
            attention=weights,
            instance_logits=s,
            embeddings=phi,
            contribution=contribution,
            global_logits=global_logits,
            relevance=relevance,
        )
        return out if batched else out.first()


@register_mil_model(
    MilModelConfig(
        "ilam",
        "integrated latent and attention mapping: y = sum a_i s_i + W_g z + b",
        has_contribution=True,
        supports_transformer=True,
    )
)
def _ilam(in_dim: int, n_classes: int, options: HeadOptions) -> nn.Module:
    return ILAM(in_dim, n_classes, options)
