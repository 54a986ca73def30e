"""The paper's residual MLP (torch, training only): input projection, residual blocks of two
normalised linear layers with swish, dropout; softmax over organ classes."""
from __future__ import annotations

import torch
from torch import nn

Q8_PER_UNIT = 32.0


class Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout),
            nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout),
        )

    def forward(self, x):
        return x + self.body(x)


class ResidualMLP(nn.Module):
    """n_in -> width projection, `n_blocks` residual blocks (2 layers each), layer norm, linear head."""

    def __init__(self, n_in: int, n_classes: int, *, width: int = 128, n_blocks: int = 4, dropout: float = 0.25):
        super().__init__()
        self.proj = nn.Linear(n_in, width)
        self.act = nn.SiLU()
        self.blocks = nn.Sequential(*[Block(width, dropout) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.act(self.proj(x)))))


def partial_label_loss(logits: torch.Tensor, allowed_bits: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass on the allowed classes (plain cross-entropy when one class is allowed)."""
    c = logits.shape[1]
    mask = ((allowed_bits.long().unsqueeze(1) >> torch.arange(c, device=logits.device)) & 1).bool()
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~mask, float("-inf")), 1)).mean()
