"""CLAM's instance clustering loss (Lu et al. 2021), with cross-entropy instead of smooth SVM.

For the bag's true class c, the k most attended instances are pseudo-labelled
"class c evidence" and the k least attended "not class c", and a per-class instance
classifier learns to tell them apart. With more than two classes (CLAM's subtyping
mode) the k most attended instances are also pseudo-negatives for every other class.
This sharpens attention onto a compact set of patches; it is a regularizer, so it is
added to the bag loss with ``instance_loss_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InstanceClusterer(nn.Module):
    def __init__(self, dim: int, n_classes: int, k: int = 8) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(n_classes))
        self.k = k
        self.n_classes = n_classes

    def loss(
        self,
        embeddings: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor | int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A batch: embeddings (B, N, E), pre-softmax scores (B, N), classes (B,), mask (B, N)
        -> per-bag losses (B,); top-k and bottom-k are chosen among each bag's own instances.
        One bag (N, E), (N,), its class -> its scalar loss."""
        if embeddings.dim() == 2:
            return self.bag_loss(embeddings, scores, int(labels))
        assert isinstance(labels, torch.Tensor)
        losses = []
        for b in range(embeddings.shape[0]):
            index = torch.nonzero(mask[b]).squeeze(1) if mask is not None else slice(None)
            losses.append(self.bag_loss(embeddings[b, index], scores[b, index], int(labels[b])))
        return torch.stack(losses)

    def bag_loss(self, embeddings: torch.Tensor, scores: torch.Tensor, label: int) -> torch.Tensor:
        """embeddings (N, E), pre-softmax scores (N,), the bag's class -> scalar loss (0 for N < 2)."""
        k = min(self.k, embeddings.shape[0] // 2)
        if k < 1:
            return embeddings.sum() * 0.0
        top = torch.topk(scores, k).indices
        bottom = torch.topk(-scores, k).indices
        losses = []
        for c, classifier in enumerate(self.classifiers):
            if c == label:
                index = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(scores.device)
            elif self.n_classes > 2:
                index, target = top, torch.zeros(k, dtype=torch.long, device=scores.device)
            else:
                continue
            losses.append(F.cross_entropy(classifier(embeddings[index]), target))
        return torch.stack(losses).mean()
