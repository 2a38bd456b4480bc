"""The two halves of ``eliminate-dead-channels``: proving and planning (``proof``, ``plan``) and the graph
surgery (``apply``). The registered pass lives in :mod:`gcompiler.passes.dead_channels`."""
