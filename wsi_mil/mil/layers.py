"""Building blocks of the MIL heads: attention pooling, channel attention, instance context.

Heads work on padded batches of bags: instances (B, N, E), coordinates (B, N, 2) and a
mask (B, N) that is True for a bag's own instances and False for padding (None: no
padding). Every bag's softmax, mean and transformer run over its own instances only,
so a bag's outputs do not depend on what else is in its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsi_mil.config import HeadOptions
from wsi_mil.mil.dropout import Dropout
from wsi_mil.mil.standardize import InputStandardizer


class GatedAttention(nn.Module):
    """CLAM's ``Attn_Net_Gated``: w^T (tanh(V h) * sigmoid(U h)); returns pre-softmax scores (N,)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), Dropout(dropout))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)


class PlainAttention(nn.Module):
    """Ilse et al.'s ungated attention: w^T tanh(V h); pre-softmax scores (N,)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


def as_batch(
    features: torch.Tensor, coords: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool]:
    """One bag (N, D) or a batch (B, N, D) -> the batch form, and whether the input was batched."""
    if features.dim() == 3:
        return features, coords, mask, True
    if mask is not None:
        raise ValueError("a mask goes with a batch of bags (B, N, D), not with one bag (N, D)")
    return features.unsqueeze(0), None if coords is None else coords.unsqueeze(0), None, False


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over each bag's own instances: scores (B, N) -> weights (B, N), 0 on padding."""
    scores = scores.float()  # a bag of thousands: no bfloat16 softmax under autocast
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def pool(weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_i a_i h_i per bag: weights (B, N), h (B, N, E) -> (B, E)."""
    return torch.bmm(weights.unsqueeze(1), h).squeeze(1)


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over each bag's own instances: (B, N, E) -> (B, 1, E)."""
    if mask is None:
        return h.mean(dim=1, keepdim=True)
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


class ChannelAttention(nn.Module):
    """Squeeze-excitation over the feature dimension with a residual path: h + h * g.

    The squeeze is the mean over the bag's instances, so the gate g (E,) is a per-slide
    re-weighting of feature channels; the residual keeps the identity reachable
    (g -> 0) and the gradient path short.
    """

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(dim, max(4, dim // reduction)), nn.ReLU(), nn.Linear(max(4, dim // reduction), dim), nn.Sigmoid()
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, N, E); the squeeze is over each bag's own instances."""
        return h + h * self.gate(masked_mean(h, mask))


def grid_positions(coords: torch.Tensor) -> torch.Tensor:
    """Level-0 coords (N, 2) -> float grid positions in units of the patch step.

    The step is the smallest positive gap between distinct x (or y) values, so the
    encoding does not depend on the scan resolution; a single-patch bag gets (0, 0).
    """
    coords = coords.to(torch.float64)
    relative = coords - coords.min(dim=0).values
    gaps = []
    for axis in range(2):
        values = torch.unique(relative[:, axis])
        if len(values) > 1:
            gaps.append(torch.diff(values).min())
    step = torch.stack(gaps).min() if gaps else torch.tensor(1.0, dtype=torch.float64)
    return (relative / step.clamp_min(1e-6)).to(torch.float32)


def positional_encoding_2d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal 2D encoding (N, dim): half the channels for x, half for y."""
    quarter = dim // 4
    frequencies = torch.exp(
        -math.log(10000.0) * torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter
    )
    parts = []
    for axis in range(2):
        angles = positions[:, axis : axis + 1] * frequencies
        parts += [torch.sin(angles), torch.cos(angles)]
    encoding = torch.cat(parts, dim=1)
    return F.pad(encoding, (0, dim - encoding.shape[1]))


class ContextLayer(nn.Module):
    """A pre-norm transformer encoder layer that can hand back its head-averaged attention (N, N)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer: hidden_dim {dim} is not divisible by transformer_heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, *, keep_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)
        weights = None
        if keep_attention:
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads), dim=-1)
            context = weights @ v
            weights = weights.mean(dim=0)
        else:
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(context.transpose(0, 1).reshape(n, dim))
        return x + self.mlp(self.norm2(x)), weights


class InstanceContext(nn.Module):
    """A small transformer over a bag's instances with 2D positional encoding from coords.

    Full self-attention costs O(N^2) memory, so bags longer than ``max_instances`` are
    cut into raster-ordered bands of at most that many patches (neighbouring rows of
    the slide), each attended within itself: O(N * max_instances) memory, and every
    patch still sees its spatial neighbourhood. ``rollout`` returns the attention
    rollout (Abnar and Zuidema 2020; residual-averaged, row-normalized, multiplied
    over layers) as a block-diagonal set of (n_b, n_b) matrices with their indices.
    """

    def __init__(
        self, dim: int, *, layers: int = 1, heads: int = 4, dropout: float = 0.1, max_instances: int = 4096
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ContextLayer(dim, heads, dropout) for _ in range(layers))
        self.max_instances = max_instances
        self.dim = dim

    def forward_batch(
        self, h: torch.Tensor, coords: torch.Tensor | None, mask: torch.Tensor | None, *, rollout: bool = False
    ) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor, torch.Tensor]]]]:
        """h (B, N, E): each bag attends within its own instances (a loop over the batch;
        padding stays as it is). Rollouts per bag, indices into that bag's rows."""
        if mask is None:
            results = [self(h[b], None if coords is None else coords[b], rollout=rollout) for b in range(h.shape[0])]
            return torch.stack([out for out, _ in results]), [r for _, r in results]
        out = h.clone()
        rollouts = []
        for b in range(h.shape[0]):
            index = torch.nonzero(mask[b]).squeeze(1)
            x, bag_rollouts = self(h[b, index], None if coords is None else coords[b, index], rollout=rollout)
            out[b, index] = x.to(out.dtype)
            rollouts.append([(index[i], joint) for i, joint in bag_rollouts])
        return out, rollouts

    def forward(
        self, h: torch.Tensor, coords: torch.Tensor | None, *, rollout: bool = False
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One bag: h (N, E), coords (N, 2)."""
        n = h.shape[0]
        if coords is not None and n > 0:
            h = h + positional_encoding_2d(grid_positions(coords).to(h.device), self.dim)
        if n <= self.max_instances:
            blocks = [torch.arange(n, device=h.device)]
        else:
            order = torch.arange(n, device=h.device)
            if coords is not None:  # raster order: by y, then x
                c = coords.to(torch.int64)
                order = torch.argsort(c[:, 1] * (int(c[:, 0].max()) + 1) + c[:, 0], stable=True).to(h.device)
            blocks = list(torch.split(order, self.max_instances))
        out = torch.empty_like(h)
        rollouts = []
        for index in blocks:
            x = h[index]
            joint: torch.Tensor | None = None
            for layer in self.layers:
                x, weights = layer(x, keep_attention=rollout)
                if rollout:
                    step = 0.5 * weights + 0.5 * torch.eye(len(index), device=h.device)
                    step = step / step.sum(dim=-1, keepdim=True)
                    joint = step if joint is None else step @ joint
            out[index] = x.to(out.dtype)
            if rollout and joint is not None:
                rollouts.append((index, joint))
        return out, rollouts


class InstanceEmbedding(nn.Module):
    """What every head does first: standardize the features (the fold's statistics), project
    them D -> ``hidden_dim`` (ReLU, dropout) and optionally re-weight channels. Heads inherit
    it, so the modules keep their names (``standardize``, ``projection``, ``channel_attention``)
    in saved weights."""

    def build_embedding(self, in_dim: int, options: HeadOptions) -> None:
        hidden = options.hidden_dim
        self.standardize = InputStandardizer(in_dim) if options.standardize else None
        self.projection = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), Dropout(options.dropout))
        self.channel_attention = ChannelAttention(hidden) if options.channel_attention else None

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Padded features (B, N, D) -> instance embeddings (B, N, hidden_dim)."""
        if self.standardize is not None:
            x = self.standardize(x)
        h = self.projection(x)
        return h if self.channel_attention is None else self.channel_attention(h, mask)
