"""zsplg: zero-shot pseudo labels for semi-supervised semantic segmentation."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
