"""CLIP with GEM dense features (Bousselham et al., CVPR 2024, "Grounding Everything").

Plain CLIP patch tokens localise badly (METHOD.md section 2). GEM adds a
parallel "self-self attention" path to the last `depth` blocks of the image
ViT. In each of those blocks, with y = ln_1(x) the block's normalised input on
the ORIGINAL path:

    q, k, v = in_proj(y), split per head
    tau^-1  = mean_tokens(||y||) / sqrt(head_dim)          (GEM's temperature rule)
    for each z in (q, k, v):
        repeat `iterations` times:  z = S(z) @ normalize(z)   (GEM's default: once)
        out_z = S(z) @ v                                      with S(z) = softmax(
                                                              normalize(z) normalize(z)^T / tau)
    gem += ls_1(out_proj(mean(out_q, out_k, out_v)))

The GEM path starts from the original path's tokens at the first GEM block and
only accumulates these attention outputs (no MLP); the original path runs the
stock open_clip blocks unchanged, so it still gives the normal image embedding.
Final GEM tokens go through ln_post and proj; the CLS token is dropped.
`dense_mode="maskclip"` is the cheaper MaskCLIP variant: in the last block only
the value path, out_proj(v(ln_1(x))), with neither the attention nor the
residuals/MLP, then ln_post and proj.

Why not the PyPI package `gem-torch` (1.0.1, WalBouss/GEM): it is written for
open_clip <= 2.23, whose transformer ran sequence-first. It permutes the tokens
to (L, N, D) before `visual.transformer`, but open_clip 3.x blocks are batch-first,
so the blocks it leaves untouched attend across the batch instead of across
tokens. Run unmodified on open_clip 3.3 with a random tiny CLIP, its "original"
CLS embedding was off from `encode_image` by 0.95; forcing those blocks
back to sequence-first fixed it (7e-7). It also imports cv2, matplotlib and einops
without declaring them. So GEM is reimplemented here (about 60 lines), over the
stock open_clip VisionTransformer modules; nothing is monkey-patched. Checked
against gem-torch (with that fix) on a random 8-block tiny CLIP: dense tokens
equal to 1e-6 at 4 x 4 and at a resampled 7 x 7 grid. Note `depth` counts GEM
blocks: our 6 is gem-torch's `gem_depth=7` (it modifies blocks -1 .. -(depth-1)).

Input: the image is resized to a square `input_size` (default 448, 28 x 28
patches for ViT-B/16) as GEM does, with bicubic antialiased resampling. The
aspect ratio is not kept, but the feature map still covers the whole image, which
is what mask pooling (annotate.pool_masks) assumes. `resize="long-side"` keeps
the aspect ratio instead (long side to input_size, both sides rounded to whole
patches) and gives a non-square map. The positional embeddings are resampled
bicubically from the 14 x 14 training grid (cached per grid size).

Checkpoint: OpenAI's ViT-B-16.pt is a TorchScript archive holding fp16
weights. It is read with torch.jit.load; plain state dicts (.pt/.pth/.bin/
.safetensors, optionally wrapped in {"state_dict": ...} or prefixed "module.") are
read with open_clip's weights-only reader. Both load strictly into open_clip's
"ViT-B-16" with QuickGELU (OpenAI trained with it). The key layout is the same.
Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from zsplg.runtime.device import autocast_for, resolve_device, resolve_precision

WEIGHTS_NAME = "clip-vit-b-16-openai"
MODEL_NAME = "ViT-B-16"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DENSE_MODES = ("gem", "maskclip")
RESIZE_MODES = ("square", "long-side")
# Non-tensor attributes of OpenAI's TorchScript model that show up in its state dict.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_TEXT_BATCH = 256


# --------------------------------------------------------------------------- GEM primitives


def self_self_attention_weights(x: torch.Tensor, inv_temperature: torch.Tensor | float
                                ) -> torch.Tensor:
    """softmax(normalize(x) normalize(x)^T * inv_temperature) over the last axis.

    x: (..., N, d) -> (..., N, N); every row sums to 1.
    """
    x = F.normalize(x, dim=-1)
    return (x @ x.transpose(-2, -1) * inv_temperature).softmax(dim=-1)


def gem_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  inv_temperature: torch.Tensor | float, iterations: int = 1) -> torch.Tensor:
    """GEM's self-self attention on per-head (B, H, N, d) projections -> (B, H, N, d).

    Each of q, k and v first refines itself `iterations` times (z <- S(z) @ normalize(z)),
    then its self-self attention S(z) is applied to the original v; the three
    results are averaged (gem/gem_utils.py: SelfSelfAttention.forward).
    """
    out = torch.zeros_like(v)
    for z in (q, k, v):
        for _ in range(iterations):
            z = self_self_attention_weights(z, inv_temperature) @ F.normalize(z, dim=-1)
        out = out + self_self_attention_weights(z, inv_temperature) @ v
    return out / 3


def gem_inverse_temperature(y: torch.Tensor, head_dim: int) -> torch.Tensor:
    """GEM's inverse temperature: mean token norm of the block's normalised input,
    times head_dim^-0.5 (the usual attention scale). y: (B, N, C) -> (B, 1, 1, 1)."""
    return y.norm(dim=-1).mean(dim=-1).view(-1, 1, 1, 1) * head_dim ** -0.5


def _split_heads(y: torch.Tensor, attn: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    """(B, N, C) -> q, k, v of shape (B, H, N, C / H), with the block's own projections."""
    b, n, c = y.shape
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    return qkv.view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)


def self_self_attention(y: torch.Tensor, attn: nn.MultiheadAttention, iterations: int = 1,
                        inv_temperature: float | None = None) -> torch.Tensor:
    """A block's GEM attention output (before ls_1): y = ln_1(x), (B, N, C) -> (B, N, C)."""
    b, n, c = y.shape
    q, k, v = _split_heads(y, attn)
    head_dim = c // attn.num_heads
    scale = gem_inverse_temperature(y, head_dim) if inv_temperature is None else inv_temperature
    out = gem_attention(q, k, v, scale, iterations)
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, c))


def value_path(y: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    """MaskCLIP: out_proj(v), skipping the attention. y = ln_1(x), (B, N, C) -> (B, N, C)."""
    c = y.shape[-1]
    v = F.linear(y, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    return attn.out_proj(v)


def resample_positional_embedding(table: torch.Tensor, old_grid: tuple[int, int],
                                  new_grid: tuple[int, int]) -> torch.Tensor:
    """(1 + h*w, C) table with a CLS row -> (1 + H*W, C), bicubic (antialiased, as GEM)."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    cls, grid = table[:1], table[1:]
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(table.dtype)
    return torch.cat([cls, grid])


# --------------------------------------------------------------------------- the image encoder


class GemVisionEncoder:
    """Dense features from an open_clip VisionTransformer, GEM or MaskCLIP style.

    Wraps the stock modules without changing them: `forward` returns the dense
    tokens (B, h*w, D) and the normal image embedding (B, D), the latter equal
    to `model.encode_image`.
    """

    def __init__(self, visual: nn.Module, dense_mode: str = "gem", depth: int = 6,
                 iterations: int = 1, inv_temperature: float | None = None) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        if dense_mode not in DENSE_MODES:
            raise ValueError(f"dense_mode must be one of {DENSE_MODES}, got {dense_mode!r}")
        if not isinstance(visual, VisionTransformer):
            raise TypeError("GEM needs an open_clip VisionTransformer, "
                            f"got {type(visual).__name__}")
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise ValueError("GEM supports CLIP ViTs pooled by the CLS token (OpenAI/LAION style)")
        blocks = visual.transformer.resblocks
        if not all(isinstance(b, ResidualAttentionBlock)
                   and isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
            raise ValueError("GEM supports open_clip's default ResidualAttentionBlock only")
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("expected a batch-first open_clip transformer (open_clip >= 2.24)")
        if dense_mode == "gem" and not 1 <= depth <= len(blocks):
            raise ValueError(f"GEM depth must be in 1..{len(blocks)}, got {depth}")
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        self.visual = visual
        self.dense_mode = dense_mode
        self.depth = depth if dense_mode == "gem" else 1
        self.iterations = iterations
        self.inv_temperature = inv_temperature
        self.patch_size = tuple(visual.patch_size)
        self.grid_size = tuple(visual.grid_size)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1 + h*w, C) table for a grid; resampled tables are cached per grid size."""
        table = self.visual.positional_embedding
        if tuple(grid) == self.grid_size:
            return table
        key = (tuple(grid), table.device, table.dtype)
        if key not in self._pos_cache:
            with torch.no_grad(), torch.autocast(table.device.type, enabled=False):
                self._pos_cache[key] = resample_positional_embedding(
                    table.detach(), self.grid_size, tuple(grid))
        return self._pos_cache[key]

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) normalised pixels -> tokens (B, 1 + h*w, C) entering the blocks."""
        visual = self.visual
        x = visual.conv1(pixels)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x), grid

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """-> dense patch embeddings (B, h*w, D), image embedding (B, D), grid (h, w)."""
        visual = self.visual
        x, grid = self.embed(pixels)
        blocks = visual.transformer.resblocks
        first = len(blocks) - self.depth
        for block in blocks[:first]:
            x = block(x)
        if self.dense_mode == "maskclip":
            dense = value_path(blocks[-1].ln_1(x), blocks[-1].attn)
            x = blocks[-1](x)
        else:
            dense = x
            for block in blocks[first:]:
                y = block.ln_1(x)
                dense = dense + block.ls_1(self_self_attention(y, block.attn, self.iterations,
                                                               self.inv_temperature))
                x = block(x)
        dense = visual.ln_post(dense[:, 1:]) @ visual.proj
        image = visual.ln_post(x[:, 0]) @ visual.proj
        return dense, image, grid

    __call__ = forward


# --------------------------------------------------------------------------- checkpoints


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold <root>/constants.pkl and code/; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An OpenAI-layout CLIP state dict from a TorchScript archive (OpenAI's own
    files) or a plain checkpoint (weights-only unpickling)."""
    from open_clip.factory import load_state_dict

    path = Path(path)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():  # torch 2.10+ calls torch.jit deprecated; still works
            warnings.simplefilter("ignore", FutureWarning)
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        state = load_state_dict(str(path), device="cpu", weights_only=True)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return state


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "Model initialized randomly" warning: weights follow at once."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_clip_checkpoint(path: str | Path, model_name: str = MODEL_NAME) -> nn.Module:
    """open_clip `model_name` (QuickGELU, as OpenAI trained it) with the checkpoint's
    weights loaded strictly: a missing, unexpected or misshapen key is an error."""
    import open_clip

    state = read_clip_state_dict(path)
    with _quiet_random_init():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- the backend


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str, context_length: int):
    """open_clip's tokenizer for the model (the packaged CLIP BPE for ViT-B-16: no
    download); the plain SimpleTokenizer if open_clip wants to fetch something."""
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name, context_length=context_length)
    except Exception:  # any lookup or download failure: the packaged BPE will do
        return open_clip.SimpleTokenizer(context_length=context_length)


class ClipGemBackend:
    """A DenseVisionLanguageModel over open_clip CLIP with GEM (or MaskCLIP) features.

    Features and text vectors live in CLIP's joint space and are compared by
    cosine. The defaults (threshold 0.2 on the cosine, temperature 0.01) are
    a guess from published GEM/CLIP patch-text cosines (about 0.15 to 0.35);
    they could not be measured here (no real CLIP weights) and need measuring.
    """

    name = "clip-gem"
    default_threshold = 0.2
    default_temperature = 0.01

    def __init__(self, model: nn.Module, dense_mode: str = "gem", device: str = "auto",
                 input_size: int = 448, gem_depth: int = 6, gem_iterations: int = 1,
                 resize: str = "square", precision: str = "auto",
                 model_name: str = MODEL_NAME, weights: str | None = None) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if input_size <= 0:
            raise ValueError("input_size must be positive")
        self.device = torch.device(resolve_device(str(device)))
        self.model = model.to(self.device).eval()
        self.encoder = GemVisionEncoder(model.visual, dense_mode=dense_mode, depth=gem_depth,
                                        iterations=gem_iterations)
        self.name = "clip-gem" if dense_mode == "gem" else "clip-maskclip"
        self.dense_mode = dense_mode
        self.input_size = input_size
        self.resize = resize
        self.model_name = model_name
        self.weights = weights
        # the encoders' precision ("auto": bf16 on cuda); similarities are fp32 either way
        self.precision = resolve_precision(precision, self.device)
        self.tokenizer = _tokenizer(model_name, getattr(model, "context_length", 77))
        self.mean = torch.tensor(OPENAI_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_STD, device=self.device).view(3, 1, 1)

    def config(self) -> dict:
        gem = ({"gem_depth": self.encoder.depth, "gem_iterations": self.encoder.iterations}
               if self.dense_mode == "gem" else {})
        return {"name": self.name, "model": self.model_name, "weights": self.weights,
                "dense_mode": self.dense_mode, **gem, "input_size": self.input_size,
                "resize": self.resize,
                "precision": self.precision}

    def _autocast(self):
        return autocast_for(self.precision, self.device)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size: a square input_size, or the long side to input_size with
        both sides whole patches ("long-side")."""
        if self.resize == "square":
            return self.input_size, self.input_size
        ph, pw = self.encoder.patch_size
        scale = self.input_size / max(height, width)
        return (max(ph, round(height * scale / ph) * ph), max(pw, round(width * scale / pw) * pw))

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> normalised (1, 3, h, w) on the device."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(self.device)
        x = x.permute(2, 0, 1).float().div_(255)[None]
        x = F.interpolate(x, size=self.network_size(*image.shape[:2]), mode="bicubic",
                          antialias=True, align_corners=False).clamp_(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> float32 (D, h, w) on the CPU, not normalised."""
        with self._autocast():
            dense, _, (h, w) = self.encoder(self.preprocess(image))
        return dense[0].float().T.reshape(-1, h, w).cpu()

    @torch.no_grad()
    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        """Each class's prompts encoded, normalised, averaged and renormalised -> (C, D)."""
        if any(len(group) == 0 for group in prompts):
            raise ValueError("every class needs at least one prompt")
        flat = [sentence for group in prompts for sentence in group]
        vectors = []
        for start in range(0, len(flat), _TEXT_BATCH):
            tokens = self.tokenizer(flat[start:start + _TEXT_BATCH]).to(self.device)
            with self._autocast():
                vectors.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        vectors = torch.cat(vectors) if vectors else torch.zeros(0, self.model.visual.output_dim)
        out, start = [], 0
        for group in prompts:
            out.append(vectors[start:start + len(group)].mean(dim=0))
            start += len(group)
        if not out:
            return vectors
        return F.normalize(torch.stack(out), dim=-1)

    @torch.no_grad()
    def class_probabilities(self, pooled: torch.Tensor, text: torch.Tensor, threshold: float,
                            temperature: float) -> torch.Tensor:
        from zsplg.vl.base import thresholded_softmax

        similarity = (F.normalize(pooled.float().cpu(), dim=-1)
                      @ F.normalize(text.float().cpu(), dim=-1).T)
        return thresholded_softmax(similarity, threshold, temperature)


def build_clip_backend(checkpoint: str | Path | None = None, dense_mode: str = "gem",
                       device: str = "auto", model: nn.Module | None = None,
                       input_size: int = 448, **options) -> ClipGemBackend:
    """The CLIP ViT-B/16 backend.

    model: an already-built open_clip CLIP (tests pass tiny random ones); else the
    OpenAI ViT-B/16 checkpoint is found by zsplg.runtime.weights (checkpoint overrides the
    managed location) and loaded strictly. options: ClipGemBackend's keywords
    (gem_depth, gem_iterations, resize, precision).
    """
    if dense_mode not in DENSE_MODES:
        raise ValueError(f"dense_mode must be one of {DENSE_MODES}, got {dense_mode!r}")
    if model is not None:
        if checkpoint is not None:
            raise ValueError("pass either a checkpoint or a built model, not both")
        return ClipGemBackend(model, dense_mode=dense_mode, device=device,
                              input_size=input_size, weights=None, **options)
    from zsplg.runtime.weights import resolve_weights

    path = resolve_weights(WEIGHTS_NAME, checkpoint, option_hint="--clip-checkpoint PATH")
    return ClipGemBackend(load_clip_checkpoint(path), dense_mode=dense_mode, device=device,
                          input_size=input_size, model_name=MODEL_NAME, weights=str(path),
                          **options)
