#!/usr/bin/env python
"""Draw a held-out sample grid of a built-in task's shipped teacher: input | baseline | teacher | target.

One row per held-out photo (a centre crop of ``--crop`` output pixels), written as a PNG. For
``builtin:sr`` the input column is the LR crop enlarged with nearest neighbours and the baseline is
bicubic; for ``builtin:cartoon`` the baseline is the identity (the input itself), so it is left out.

    python scripts/task_samples.py --task cartoon --out /tmp/cartoon_grid.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="cartoon", help="sr or cartoon")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--crop", type=int, default=192, help="side of the centre crop, in output pixels")
    p.add_argument("--weights", type=Path, default=None, help="teacher weights (default: the shipped ones)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from gcompiler.data import tasks as T
    from gcompiler.data.images import to_uint8
    from gcompiler.ioutil import atomic_file

    task = T.get_task(args.task)
    teacher = T.load_asset_model(args.weights) if args.weights else T.load_teacher(task)
    rows = []
    with torch.no_grad():
        if task.name == "sr":
            from gcompiler.data.sr import bicubic_upsample, heldout_pairs

            for _, lr, hr in heldout_pairs():
                c = args.crop // 2
                h, w = lr.shape[-2:]
                t, l = (h - c) // 2, (w - c) // 2
                x = lr[..., t:t + c, l:l + c]
                y = hr[..., 2 * t:2 * (t + c), 2 * l:2 * (l + c)]
                cols = [x.repeat_interleave(2, -1).repeat_interleave(2, -2), bicubic_upsample(x), teacher(x), y]
                rows.append(np.concatenate([to_uint8(z[0].clamp(0, 1), (0.0, 1.0)) for z in cols], 1))
        else:
            from gcompiler.data.cartoon import heldout_pairs

            for _, x, y in heldout_pairs():
                h, w = x.shape[-2:]
                c = min(args.crop, h, w)
                t, l = (h - c) // 2, (w - c) // 2
                out = teacher(x)
                cols = [x, out, y]
                rows.append(np.concatenate([to_uint8(z[0, :, t:t + c, l:l + c].clamp(-1, 1), (-1.0, 1.0))
                                            for z in cols], 1))
    from PIL import Image

    with atomic_file(args.out) as tmp:
        Image.fromarray(np.concatenate(rows, 0)).save(tmp, format="PNG")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
