"""Imports every built-in pass module so that its passes register."""
from ..quant import insert as _quant_insert  # noqa: F401,E402  insert-fake-quant
from ..quant import fold as _quant_fold  # noqa: F401,E402  fold-norms
from ..quant import convert as _quant_convert  # noqa: F401,E402  convert-to-int
from . import masks as _masks  # noqa: F401,E402  insert-masks
from . import dead_channels as _dead_channels  # noqa: F401,E402  eliminate-dead-channels
from ..kernels import lower as _kernels_lower  # noqa: F401,E402  lower-to-triton
from . import prune_ratio as _prune_ratio  # noqa: F401,E402  prune-by-ratio
