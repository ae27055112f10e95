"""SAM 2.1 everything-mode masks: the fast tier, on Meta's `sam2` package.

Why SAM 2.1 and not MobileSAM: the PyPI package `sam2` 1.1.0 (Dec 2024) carries Meta's
SAM 2.1 code as released in facebookresearch/sam2 (Meta's copyright headers, configs and
setup.py; only the package metadata names the third party who uploaded it, as Meta
publishes no wheel), the checkpoints are Meta's, and models are built from the
package's own hydra configs. MobileSAM reaches PyPI only as unofficial mirrors
(`mobilesam-mirror`, `mobilesam-lite`), not from its authors.

Checkpoint loading, the generator (SAM's pipeline, subclassed) and the restructured
decoder are one module each; the names zsplg.masks and the benchmarks use are
re-exported here.
"""

from __future__ import annotations

from zsplg.masks.sam2.checkpoint import (
    SAM2_VARIANTS,
    Sam2CheckpointError,
    build_sam2_model,
    load_sam2_checkpoint,
)
from zsplg.masks.sam2.generator import Sam2MaskGenerator, build_sam2_generator

__all__ = ["SAM2_VARIANTS", "Sam2CheckpointError", "Sam2MaskGenerator", "build_sam2_generator",
           "build_sam2_model", "load_sam2_checkpoint"]
