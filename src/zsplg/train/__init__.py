"""Semi-supervised training (UniMatch-style, with zero-shot pseudo labels).

Model and data live in backbones/model (DeepLabV3+ over interchangeable
encoders) and augment/datasets (UniMatch's transforms, drawn from explicit
per-item random generators so a resumed run sees the same crops).
"""
