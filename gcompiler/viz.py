"""``gcompiler.dump(gm, path)``: a graph as text and as a picture with its channel groups coloured.

The picture is drawn by our own layered layout (no Graphviz needed): nodes sit in rows by their depth in
the graph, boxes are coloured by the channel group their output belongs to (grey: not in a prunable
group, hatched red outline: pinned), and edges are straight lines. ``.svg`` and ``.png`` are supported.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import torch.fx as fx

from .fx.utils import node_shape

_PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
            "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6"]
_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 190, 38, 20, 26


def _label(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str]:
    if node.op == "call_module":
        op = type(gm.get_submodule(str(node.target))).__name__
    elif node.op in ("call_function", "call_method"):
        op = getattr(node.target, "__name__", str(node.target))
    else:
        op = node.op
    shape = node_shape(node)
    return f"{node.name}: {op}", "x".join(map(str, shape)) if shape is not None else ""


def node_groups(gm: fx.GraphModule) -> dict[str, tuple[int, bool]]:
    """Map node name -> (group index, prunable) for nodes whose output channels belong to a group."""
    from .analysis import channel_groups

    out: dict[str, tuple[int, bool]] = {}
    for i, g in enumerate(channel_groups(gm)):
        for name in list(g.producers) + list(g.members):
            out.setdefault(name, (i, bool(g.prunable)))
    return out


def _layout(gm: fx.GraphModule) -> dict[fx.Node, tuple[int, int]]:
    depth: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        depth[node] = 1 + max((depth[a] for a in node.all_input_nodes), default=-1)
    rows: dict[int, list[fx.Node]] = {}
    for node, d in depth.items():
        rows.setdefault(d, []).append(node)
    return {n: (col, d) for d, nodes in rows.items() for col, n in enumerate(nodes)}


def render_svg(gm: fx.GraphModule, groups: dict[str, tuple[int, bool]] | None = None) -> str:
    groups = groups if groups is not None else node_groups(gm)
    pos = _layout(gm)
    ncols = 1 + max(c for c, _ in pos.values())
    nrows = 1 + max(r for _, r in pos.values())
    width, height = ncols * (_BOX_W + _GAP_X) + _GAP_X, nrows * (_BOX_H + _GAP_Y) + _GAP_Y

    def xy(n: fx.Node) -> tuple[int, int]:
        c, r = pos[n]
        return _GAP_X + c * (_BOX_W + _GAP_X), _GAP_Y + r * (_BOX_H + _GAP_Y)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for n in gm.graph.nodes:
        x1, y1 = xy(n)
        for a in n.all_input_nodes:
            x0, y0 = xy(a)
            parts.append(f'<line x1="{x0 + _BOX_W // 2}" y1="{y0 + _BOX_H}" x2="{x1 + _BOX_W // 2}" y2="{y1}" '
                         'stroke="#555" stroke-width="1"/>')
    for n in gm.graph.nodes:
        x, y = xy(n)
        gi, prunable = groups.get(n.name, (None, False))
        fill = _PALETTE[gi % len(_PALETTE)] if gi is not None and prunable else "#e0e0e0"
        stroke = "#c00" if gi is not None and not prunable else "#333"
        title, shape = _label(gm, n)
        group_txt = f" g{gi}" if gi is not None else ""
        parts.append(f'<g><title>{html.escape(n.format_node() or n.name)}</title>'
                     f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="4" fill="{fill}" '
                     f'stroke="{stroke}"/>'
                     f'<text x="{x + 5}" y="{y + 15}">{html.escape(title[:28])}</text>'
                     f'<text x="{x + 5}" y="{y + 30}" fill="#333">{html.escape(shape + group_txt)}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_png(gm: fx.GraphModule, path: str | os.PathLike, groups: dict[str, tuple[int, bool]] | None = None) -> None:
    from PIL import Image, ImageDraw

    groups = groups if groups is not None else node_groups(gm)
    pos = _layout(gm)
    ncols = 1 + max(c for c, _ in pos.values())
    nrows = 1 + max(r for _, r in pos.values())
    img = Image.new("RGB", (ncols * (_BOX_W + _GAP_X) + _GAP_X, nrows * (_BOX_H + _GAP_Y) + _GAP_Y), "white")
    draw = ImageDraw.Draw(img)

    def xy(n: fx.Node) -> tuple[int, int]:
        c, r = pos[n]
        return _GAP_X + c * (_BOX_W + _GAP_X), _GAP_Y + r * (_BOX_H + _GAP_Y)

    for n in gm.graph.nodes:
        x1, y1 = xy(n)
        for a in n.all_input_nodes:
            x0, y0 = xy(a)
            draw.line([(x0 + _BOX_W // 2, y0 + _BOX_H), (x1 + _BOX_W // 2, y1)], fill="#555555")
    for n in gm.graph.nodes:
        x, y = xy(n)
        gi, prunable = groups.get(n.name, (None, False))
        fill = _PALETTE[gi % len(_PALETTE)] if gi is not None and prunable else "#e0e0e0"
        draw.rounded_rectangle([x, y, x + _BOX_W, y + _BOX_H], 4, fill=fill,
                               outline="#cc0000" if gi is not None and not prunable else "#333333")
        title, shape = _label(gm, n)
        draw.text((x + 5, y + 4), title[:30], fill="black")
        draw.text((x + 5, y + 20), shape + (f" g{gi}" if gi is not None else ""), fill="#333333")
    from .ioutil import atomic_file

    with atomic_file(path) as tmp:  # the temporary name has no extension: say the format
        img.save(tmp, format="PNG")


def dump(gm: fx.GraphModule, path: str | os.PathLike) -> list[Path]:
    """Write ``gm`` as text (``<stem>.txt``: code, node table with shapes and groups, group table) and as a
    picture (``path`` itself when it ends in .svg/.png, else ``<path>.svg``). Returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = path if path.suffix.lower() in (".svg", ".png") else path.with_suffix(path.suffix + ".svg")
    text_path = picture.with_suffix(".txt")
    from .analysis import channel_groups, describe_groups

    group_list = channel_groups(gm)
    groups: dict[str, tuple[int, bool]] = {}
    for i, g in enumerate(group_list):
        for name in list(g.producers) + list(g.members):
            groups.setdefault(name, (i, bool(g.prunable)))
    lines = ["# graph code", gm.code.strip(), "", "# nodes (name, op, output shape, channel group)"]
    for n in gm.graph.nodes:
        title, shape = _label(gm, n)
        gi = groups.get(n.name)
        lines.append(f"{title:<48} {shape:<20} {'g%d%s' % (gi[0], '' if gi[1] else ' (pinned)') if gi else ''}")
    lines += ["", "# channel groups", describe_groups(group_list)]
    from .ioutil import atomic_write_text

    atomic_write_text(text_path, "\n".join(lines) + "\n")
    if picture.suffix.lower() == ".png":
        render_png(gm, picture, groups)
    else:
        atomic_write_text(picture, render_svg(gm, groups))
    return [text_path, picture]
