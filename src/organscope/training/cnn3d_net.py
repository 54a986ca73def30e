"""The cnn3d network (COBRA, Henderson et al.): a residual 3D U-Net made small by three savings.

A. a 7x7x7 stride-2 input convolution (factorised into 7x1x1, 1x7x1, 1x1x7), so the network works at half
   resolution from the first layer while seeing a wide field of view;
B. bottlenecks: every residual block and every transposed convolution is wrapped in 1x1x1 convolutions that
   divide the channels by 2 (by 4 in the widest blocks);
C. asymmetric factorisation: every kxkxk convolution is k x 1 x 1, then 1 x k x 1, then 1 x 1 x k.

Additions for small organs at 3.5-5 mm voxels: a light full-resolution branch (2 -> 8 channels) is added to the
last upsampled features, so boundaries are decided at the input's resolution. Additive skips (not
concatenation) keep the decoder as cheap as the encoder. BatchNorm folds into the convolutions at ONNX export.
"""
from __future__ import annotations

import torch
from torch import nn


def factorised(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    """k x k x k convolution as three 1D convolutions (stride applied along each axis in turn)."""
    p = k // 2
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, (k, 1, 1), stride=(stride, 1, 1), padding=(p, 0, 0), bias=False),
        nn.Conv3d(c_out, c_out, (1, k, 1), stride=(1, stride, 1), padding=(0, p, 0), bias=False),
        nn.Conv3d(c_out, c_out, (1, 1, k), stride=(1, 1, stride), padding=(0, 0, p), bias=False),
    )


def bn_relu(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm3d(c), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Bottlenecked residual block: 1x1 (c -> c/f), factorised 3x3x3, 1x1 (c/f -> c), plus identity."""

    def __init__(self, c: int, factor: int = 2):
        super().__init__()
        m = max(c // factor, 4)
        self.body = nn.Sequential(
            nn.Conv3d(c, m, 1, bias=False), bn_relu(m),
            factorised(m, m, 3), bn_relu(m),
            nn.Conv3d(m, c, 1, bias=False), nn.BatchNorm3d(c),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


class Down(nn.Module):
    """Stride-2 factorised 3x3x3 convolution doubling the channels, then a residual block."""

    def __init__(self, c_in: int, c_out: int, factor: int = 2, blocks: int = 1):
        super().__init__()
        self.conv = nn.Sequential(factorised(c_in, c_out, 3, stride=2), bn_relu(c_out))
        self.blocks = nn.Sequential(*[ResBlock(c_out, factor) for _ in range(blocks)])

    def forward(self, x):
        return self.blocks(self.conv(x))


class Up(nn.Module):
    """Bottlenecked 2x2x2 transposed convolution (1x1 c_in -> c_in/f, transpose -> c_out), add the skip, then
    a residual block."""

    def __init__(self, c_in: int, c_out: int, factor: int = 2, block: bool = True):
        super().__init__()
        m = max(c_in // factor, 4)
        self.up = nn.Sequential(nn.Conv3d(c_in, m, 1, bias=False), bn_relu(m),
                                nn.ConvTranspose3d(m, c_out, 2, stride=2, bias=False), nn.BatchNorm3d(c_out))
        self.act = nn.ReLU(inplace=True)
        self.block = ResBlock(c_out, 2) if block else nn.Identity()

    def forward(self, x, skip):
        return self.block(self.act(self.up(x) + skip))


class Cnn3dNet(nn.Module):
    """(N, 2, D, H, W) windows -> (N, n_classes, D, H, W) logits; D, H, W multiples of 16."""

    def __init__(self, n_classes: int, *, width: int = 16, in_channels: int = 2, full_res: int = 8):
        super().__init__()
        c0, c1, c2, c3 = width, 2 * width, 4 * width, 8 * width
        self.stem = nn.Sequential(factorised(in_channels, c0, 7, stride=2), bn_relu(c0), ResBlock(c0, 2))  # A
        self.down1 = Down(c0, c1, 2)
        self.down2 = Down(c1, c2, 2)
        self.down3 = Down(c2, c3, 4, blocks=2)  # the widest blocks: bottleneck factor 4
        self.up3 = Up(c3, c2, 4)
        self.up2 = Up(c2, c1, 2)
        self.up1 = Up(c1, c0, 2)
        self.full = nn.Sequential(factorised(in_channels, full_res, 3), bn_relu(full_res))
        self.up0 = Up(c0, full_res, 2, block=False)
        self.head = nn.Sequential(factorised(full_res, full_res, 3), bn_relu(full_res),
                                  nn.Conv3d(full_res, n_classes, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # "He" normal, as in the paper

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        y = self.up3(s3, s2)
        y = self.up2(y, s1)
        y = self.up1(y, s0)
        y = self.up0(y, self.full(x))
        return self.head(y)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_gflops(net: nn.Module, shape=(1, 2, 128, 128, 128)) -> float:
    """Multiply-adds x 2 of every convolution for one forward pass (the usual 'FLOPs' of papers)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.weight[0].numel() if isinstance(mod, nn.Conv3d) else mod.weight.shape[1] * mod.weight[0, 0].numel()
        if isinstance(mod, nn.ConvTranspose3d):
            total += 2 * inp[0].numel() * mod.weight.shape[1] * mod.weight[0, 0].numel()
        else:
            total += 2 * out.numel() * k

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.no_grad():
        net.eval()(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return total / 1e9
