"""Other patterns of public generator code: the PyTorch DCGAN example, buffers updated in forward, helper
functions with asserts, conv subclasses (our own code, small widths)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------------------ PyTorch DCGAN example

class DCGANGenerator(nn.Module):
    def __init__(self, ngpu=1, nz=16, ngf=8, nc=3):
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, input):
        if input.is_cuda and self.ngpu > 1:
            output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        else:
            output = self.main(input)
        return output


# ------------------------------------------------------------------------- buffers updated in forward

class StatTracker(nn.Module):
    """Counts calls and keeps an input-mean EMA in buffers while training; normalizes with its stored stats."""

    def __init__(self, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("running_mean", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x):
        self.num_calls += 1
        if self.training:
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * x.mean(dim=(0, 2, 3), keepdim=True))
        return x - self.running_mean


class BufferedNet(nn.Module):
    def __init__(self, nf=8):
        super().__init__()
        self.stats = StatTracker()
        self.register_buffer("scale", torch.ones(1, nf, 1, 1))
        self.conv1 = nn.Conv2d(3, nf, 3, padding=1)
        self.norm = nn.BatchNorm2d(nf)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv3 = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        x = self.stats(x)
        self.scale = self.scale.to(x)
        h = F.relu(self.norm(self.conv1(x)))
        h = F.relu(self.conv2(h), inplace=True) * self.scale
        return self.conv3(h)


# ---------------------------------------------------------------------- helper functions with asserts

def space_to_depth(x, block):
    n, c, h, w = x.shape
    assert h % block == 0 and w % block == 0, f"size {h}x{w} is not a multiple of {block}"
    x = x.view(n, c, h // block, block, w // block, block)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(n, c * block * block, h // block, w // block)


def pad_to_multiple(x, multiple):
    h, w = x.shape[-2:]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


class HelperNet(nn.Module):
    def __init__(self, nf=8):
        super().__init__()
        self.head = nn.Conv2d(3 * 4, nf, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(nf, 4 * 3, 3, padding=1))

    def forward(self, x):
        h, w = x.shape[2:]
        x = pad_to_multiple(x, 4)
        y = self.body(F.leaky_relu(self.head(space_to_depth(x, 2)), 0.2))
        return F.pixel_shuffle(y, 2)[..., :h, :w]


# ------------------------------------------------------------------------------------ conv subclasses

class WSConv2d(nn.Conv2d):
    """Weight-standardized conv: its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SameConvTranspose(nn.ConvTranspose2d):
    """A transposed conv cropping its output to exactly twice the input (its own forward)."""

    def forward(self, x):
        y = super().forward(x)
        return y[:, :, : 2 * x.shape[2], : 2 * x.shape[3]]


class ScaledInitConv(nn.Conv2d):
    """Only __init__ changes: a plain conv."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.weight.mul_(0.5)


class CustomConvNet(nn.Module):
    def __init__(self, nf=8):
        super().__init__()
        self.conv_in = ScaledInitConv(3, nf, 3, padding=1)
        self.conv_a = ScaledInitConv(nf, nf, 3, stride=2, padding=1)
        self.ws = WSConv2d(nf, nf, 3, padding=1)
        self.up = SameConvTranspose(nf, nf, 4, stride=2, padding=1)
        self.conv_b = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_out = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv_in(x))
        h = F.relu(self.conv_a(h))
        h = F.relu(self.ws(h))
        h = F.relu(self.up(h))
        return self.conv_out(F.relu(self.conv_b(h)))


# ------------------------------------------------------------------------------ GroupNorm(1, C) trunk

class GroupNormNet(nn.Module):
    def __init__(self, nf=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, nf, 3, padding=1), nn.GroupNorm(1, nf), nn.SiLU(),
                                 nn.Conv2d(nf, nf, 3, padding=1), nn.GroupNorm(1, nf), nn.SiLU(),
                                 nn.Conv2d(nf, 3, 3, padding=1))

    def forward(self, x):
        return self.net(x)
