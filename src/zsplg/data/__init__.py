"""Class specs, image and label I/O, and image sources (folders and pair-lists)."""
