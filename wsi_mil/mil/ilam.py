"""ILAM, Integrated Latent and Attention Mapping (ARCHITECTURE.md section 4; our definition).

- shared projection phi_i = phi(h_i), D -> 512 (ReLU, dropout), optionally re-weighted
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
from wsi_mil.mil.layers import ChannelAttention, GatedAttention, InstanceContext
from wsi_mil.mil.registry import HeadOptions, MilModelConfig, MilOutput, register_mil_model


class ILAM(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, options: HeadOptions) -> None:
        super().__init__()
        hidden = options.hidden_dim
        self.projection = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(options.dropout))
        self.channel_attention = ChannelAttention(hidden) if options.channel_attention else None
        self.context = None
        if options.transformer:
            self.context = InstanceContext(hidden, layers=options.transformer_layers, heads=options.transformer_heads,
                                           dropout=0.1, max_instances=options.transformer_max_instances)  # fmt: skip
        self.attention = GatedAttention(hidden, options.attention_dim, options.dropout)
        self.latent = nn.Linear(hidden, n_classes, bias=False)  # W_s
        self.global_head = nn.Linear(hidden, n_classes)  # W_g, b
        self.clusterer = InstanceClusterer(hidden, n_classes, options.instance_k) if options.instance_loss else None

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None, *, explain: bool = False) -> MilOutput:
        phi = self.projection(features)
        if self.channel_attention is not None:
            phi = self.channel_attention(phi)
        rollouts = []
        context = phi
        if self.context is not None:
            context, rollouts = self.context(phi, coords, rollout=explain)
        scores = self.attention(context)
        weights = torch.softmax(scores, dim=0)
        s = self.latent(phi)
        contribution = weights.unsqueeze(1) * s
        global_logits = self.global_head(weights @ phi)
        relevance = None
        if rollouts:
            # r_j = sum_i a_i R_ij: how much patch j feeds the attended tokens (sums to 1).
            relevance = torch.zeros_like(weights)
            for index, joint in rollouts:
                relevance[index] = weights[index] @ joint
        return MilOutput(logits=contribution.sum(dim=0) + global_logits, attention_raw=scores, attention=weights,
                         instance_logits=s, embeddings=phi, contribution=contribution,
                         global_logits=global_logits, relevance=relevance)  # fmt: skip


@register_mil_model(MilModelConfig("ilam", "integrated latent and attention mapping: y = sum a_i s_i + W_g z + b",
                                   has_contribution=True, supports_transformer=True))  # fmt: skip
def _ilam(in_dim: int, n_classes: int, options: HeadOptions) -> nn.Module:
    return ILAM(in_dim, n_classes, options)
