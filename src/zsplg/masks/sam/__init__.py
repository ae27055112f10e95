"""SAM (v1) everything-mode masks: checkpoint loading, the low-resolution filter engine,
the restructured decoder and the generator, one module each.

The names other stages use are re-exported here, so `zsplg.masks.sam` stays the one
import path for them (the CLI reports SamCheckpointError; zsplg.masks builds
generators). The decoder module imports segment-anything at import time and is not
imported here.
"""

from __future__ import annotations

from zsplg.masks.sam.checkpoint import (
    SAM_VARIANTS,
    SamCheckpointError,
    load_sam_checkpoint,
    model_fingerprint,
    state_dict_problems,
)
from zsplg.masks.sam.generator import SamMaskGenerator, SamMasks, build_sam_generator
from zsplg.masks.sam.regions import remove_small_regions

__all__ = ["SAM_VARIANTS", "SamCheckpointError", "SamMaskGenerator", "SamMasks",
           "build_sam_generator", "load_sam_checkpoint", "model_fingerprint",
           "remove_small_regions", "state_dict_problems"]
