"""``gcompiler demo``: the main job on the built-in default (the target of ``make demo``)."""
from __future__ import annotations

import argparse

from .cli import command, zoo_table


def cmd_demo(args: argparse.Namespace) -> int:
    print("gcompiler model zoo at each model's reference input (MACs: transposed convs at output resolution)\n")
    print(zoo_table())
    return 0


command("demo", "run the main job on the built-in default (for now: print the zoo's profile table)")(cmd_demo)
