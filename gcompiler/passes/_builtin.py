"""Imports every built-in pass module so that its passes register."""
from . import masks as _masks  # noqa: F401,E402  insert-masks
from . import dead_channels as _dead_channels  # noqa: F401,E402  eliminate-dead-channels
