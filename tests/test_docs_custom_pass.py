"""The user-defined pass shown in docs/custom_pass.md works as documented."""
import re
from pathlib import Path

import torch
import torch.nn as nn

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_pass.md"


def test_documented_custom_pass_runs_and_keeps_its_contract():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    ns: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), ns)  # registers "strip-dropout"
    import gcompiler

    assert "strip-dropout" in gcompiler.passes.available()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.5), nn.ReLU(), nn.Dropout2d(0.1),
                          nn.Conv2d(4, 3, 1))
    x = torch.randn(1, 3, 8, 8)
    gm = gcompiler.compile(model, "strip-dropout{keep_last=1}", x, verify="numeric")
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds == ["Conv2d", "ReLU", "Dropout2d", "Conv2d"]
    assert torch.equal(gm.eval()(x), model.eval()(x))
