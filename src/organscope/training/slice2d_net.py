"""The slice2d network: a small 2D Res-UNet per organ (binary: organ vs not), after Salimi et al.'s Res-UNet.
Four resolutions, two 3x3 convolutions with BatchNorm and a residual shortcut per block, max-pool down,
transposed convolution up, concatenated skips; one logit per pixel."""
from __future__ import annotations

import torch
from torch import nn


class ResBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                                                      nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class ResUNet2d(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W) logits; H, W multiples of 8."""

    def __init__(self, width: int = 8, in_channels: int = 1):
        super().__init__()
        c = [width, 2 * width, 4 * width, 8 * width]
        self.enc = nn.ModuleList([ResBlock2d(in_channels, c[0])] + [ResBlock2d(c[i], c[i + 1]) for i in range(3)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in range(3)])
        self.dec = nn.ModuleList([ResBlock2d(2 * c[i], c[i]) for i in range(3)])
        self.head = nn.Conv2d(c[0], 1, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in (2, 1, 0):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)
