"""CartoonGAN generator (``cartoongan_g``; Chen et al., CVPR 2018).

7x7 stem (64), two down stages each a stride-2 3x3 conv then a 3x3 conv (128, 256) with one norm,
8 residual blocks at 256 channels, two up stages each a stride-2 3x3 transposed conv then a 3x3 conv
(128, 64) with one norm, and a 7x7 head with tanh. All convs carry biases; the norm is an affine
InstanceNorm with eps 1e-9.

Key names are those of the public PyTorch port of the released models
(Yijunmaverick/CartoonGAN-Test-Pytorch-Torch): flat attributes ``conv01_1``, ``in01_1``, ...,
``conv04_1``..``conv11_2`` for the blocks, ``deconv01_1``..``deconv03_1``. That port's norm stores
its affine parameters as ``scale`` / ``shift``; :meth:`CartoonGANGenerator.adapt_state_dict` maps them
to ``weight`` / ``bias`` so :func:`gcompiler.load_checkpoint` reads those files as they are. (The port
expects BGR input in [-1, 1].)
"""
from __future__ import annotations

import torch
from torch import nn

from gcompiler.models._common import check_positive
from gcompiler.models.registry import image, register_model

_N_BLOCKS = 8


def _in(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, eps=1e-9, affine=True)


class CartoonGANGenerator(nn.Module):
    """``(N, 3, H, W)`` -> ``(N, 3, H, W)`` in [-1, 1] (H, W multiples of 4)."""

    def __init__(self, ngf: int = 64) -> None:
        super().__init__()
        check_positive("cartoongan_g", ngf=ngf)
        c1, c2, c3 = ngf, 2 * ngf, 4 * ngf
        self.refpad01_1 = nn.ReflectionPad2d(3)
        self.conv01_1 = nn.Conv2d(3, c1, 7)
        self.in01_1 = _in(c1)
        self.relu01 = nn.ReLU()
        self.conv02_1 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.conv02_2 = nn.Conv2d(c2, c2, 3, 1, 1)
        self.in02_1 = _in(c2)
        self.relu02 = nn.ReLU()
        self.conv03_1 = nn.Conv2d(c2, c3, 3, 2, 1)
        self.conv03_2 = nn.Conv2d(c3, c3, 3, 1, 1)
        self.in03_1 = _in(c3)
        self.relu03 = nn.ReLU()
        for b in self._block_ids():
            setattr(self, f"refpad{b}_1", nn.ReflectionPad2d(1))
            setattr(self, f"conv{b}_1", nn.Conv2d(c3, c3, 3))
            setattr(self, f"in{b}_1", _in(c3))
            setattr(self, f"relu{b}", nn.ReLU())
            setattr(self, f"refpad{b}_2", nn.ReflectionPad2d(1))
            setattr(self, f"conv{b}_2", nn.Conv2d(c3, c3, 3))
            setattr(self, f"in{b}_2", _in(c3))
        self.deconv01_1 = nn.ConvTranspose2d(c3, c2, 3, 2, 1, 1)
        self.deconv01_2 = nn.Conv2d(c2, c2, 3, 1, 1)
        self.in12_1 = _in(c2)
        self.relu12 = nn.ReLU()
        self.deconv02_1 = nn.ConvTranspose2d(c2, c1, 3, 2, 1, 1)
        self.deconv02_2 = nn.Conv2d(c1, c1, 3, 1, 1)
        self.in13_1 = _in(c1)
        self.relu13 = nn.ReLU()
        self.refpad12_1 = nn.ReflectionPad2d(3)
        self.deconv03_1 = nn.Conv2d(c1, 3, 7)
        self.tanh = nn.Tanh()

    @staticmethod
    def _block_ids() -> list[str]:
        return [f"{i:02d}" for i in range(4, 4 + _N_BLOCKS)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu01(self.in01_1(self.conv01_1(self.refpad01_1(x))))
        y = self.relu02(self.in02_1(self.conv02_2(self.conv02_1(y))))
        t = self.relu03(self.in03_1(self.conv03_2(self.conv03_1(y))))
        for b in self._block_ids():
            m = lambda name: getattr(self, name.format(b))  # noqa: E731
            y = m("relu{}")(m("in{}_1")(m("conv{}_1")(m("refpad{}_1")(t))))
            t = m("in{}_2")(m("conv{}_2")(m("refpad{}_2")(y))) + t
        y = self.relu12(self.in12_1(self.deconv01_2(self.deconv01_1(t))))
        y = self.relu13(self.in13_1(self.deconv02_2(self.deconv02_1(y))))
        return self.tanh(self.deconv03_1(self.refpad12_1(y)))

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the public port's ``inNN_M.scale`` / ``.shift`` to ``.weight`` / ``.bias``."""
        out = {}
        for k, v in state_dict.items():
            mod, _, leaf = k.rpartition(".")
            if mod.startswith("in") and leaf in ("scale", "shift"):
                k = f"{mod}.{'weight' if leaf == 'scale' else 'bias'}"
            out[k] = v
        return out


@register_model("cartoongan_g", family="cartoongan", kind="generator", default_input=(image(3, 256),))
def cartoongan_g(*, ngf: int = 64) -> CartoonGANGenerator:
    """CartoonGAN generator (8 residual blocks, key layout of the public PyTorch port)."""
    return CartoonGANGenerator(ngf)
