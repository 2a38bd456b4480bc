"""gcompiler.dump writes the graph as text and as a picture with channel groups coloured."""
import torch
import torch.nn as nn
from PIL import Image

import gcompiler
from gcompiler.viz import dump


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(y + self.b(y))


def test_dump_text_svg_and_png(tmp_path):
    gm = gcompiler.trace(Block(), torch.randn(1, 3, 8, 8))
    txt, svg = dump(gm, tmp_path / "g.svg")
    text = txt.read_text()
    assert "# channel groups" in text and "b: Conv2d" in text
    body = svg.read_text()
    assert body.startswith("<svg") and body.count("<rect") == len(gm.graph.nodes) + 1
    # a and b feed one add: one coupled group, drawn in one (non-grey) colour
    fills = {line.split('fill="')[1].split('"')[0] for line in body.splitlines() if "a: Conv2d" in line or
             "b: Conv2d" in line}
    assert len(fills) == 1 and "#e0e0e0" not in fills
    _, png = dump(gm, tmp_path / "g.png")
    assert Image.open(png).size[1] > 100
