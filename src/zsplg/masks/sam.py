"""SAM everything-mode masks on the official `segment-anything` package, built for throughput.

The output equals `SamAutomaticMaskGenerator`'s (one crop layer, binary masks): the same
candidates, the same predicted-IoU and stability filters, the same box NMS, the same masks,
scores and boxes. What changes is where the work goes. The reference decodes the point grid
64 prompts at a time and upsamples *every* candidate's 256 x 256 logits to the full image
(two bilinear resizes: to the encoder's 1024 square, then to the original size) before it
filters, then RLE-encodes the survivors in Python. Here:

1. the image is encoded once and all grid points are decoded in one batch (on CUDA, under
   bf16/fp16 autocast), through the predictor's prompt encoder and mask decoder minus
   `predict_torch`'s upsampling;
2. the predicted-IoU filter runs on the decoder's scores, before any upsampling;
3. the stability score, and for its survivors the box that NMS needs, are computed from the
   LOW-RESOLUTION logits, exactly: the two resizes compose into one separable linear map
   whose weights are read off by resizing identity matrices with the same `F.interpolate`
   calls, so each full-resolution pixel is a convex combination of a K x K (K <= 3) low-res
   window. Where a window lies wholly above or below a threshold its pixels are decided
   without being computed; only the pixels of windows that straddle it (a thin band along
   the contour) are evaluated, from the same weights. A pixel within float32 rounding of the
   threshold (1e-5 of the window's largest |logit|; the rounding itself stays below 2e-6)
   cannot be decided; a candidate whose filter decision or box could hinge on one takes the
   reference path (full-resolution `postprocess_masks`), so the result stays exact;
4. box NMS runs on those boxes, and only the NMS survivors are upsampled to full resolution,
   with the model's own `postprocess_masks`, straight into the output array.

So the full-resolution work scales with the number of output masks, not with 3 x points.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional

from zsplg.masks.base import MaskProposals

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
_EMBED_DIM_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_CPU_POINTS_PER_BATCH = 64  # the full-size decoder needs ~28 MB of activations per point
_LOW_RES_CHUNK_ELEMENTS = 1 << 23  # low-res logits handled per step of the exact filters
_FULL_RES_CHUNK_ELEMENTS = 1 << 25  # full-resolution logits materialised per step
# undecidable: |value - threshold| <= this x the largest |logit| the pixel is interpolated
# from; float32 rounding of the two resizes (and of our own evaluation) stays below ~2e-6
_RELATIVE_TOLERANCE = 1e-5


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint file cannot be read or does not fit the requested model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------- loading


def _sam_registry() -> dict:
    try:
        from segment_anything import sam_model_registry
    except ImportError as error:  # pragma: no cover - segment-anything is installed with zsplg
        raise ImportError("SAM masks need the segment-anything package: "
                          "pip install segment-anything") from error
    return sam_model_registry


def _describe_keys(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def state_dict_problems(expected: dict[str, tuple[int, ...]],
                        state: dict[str, torch.Tensor]) -> list[str]:
    """Why ``state`` does not fit a model with these key shapes (empty: it fits).

    Checked before load_state_dict so the message names what is wrong in a few
    words instead of torch's list of every key.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(key for key in expected
                       if key in state and tuple(state[key].shape) != expected[key])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({_describe_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_describe_keys(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} tensors of the wrong shape "
                        f"({_describe_keys(misshaped)})")
    return problems


def load_sam_checkpoint(variant: str, checkpoint: str | Path) -> Sam:
    """Build SAM `variant` and load `checkpoint` into it with strict key and shape checks.

    Raises SamCheckpointError naming the file when it cannot be read or does not fit
    (missing, unexpected or wrongly shaped tensors; a likely other variant is suggested).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {', '.join(SAM_VARIANTS)}")
    build = _sam_registry()[variant]
    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (zip, pickle, EOF, OS)
        raise SamCheckpointError(path, f"cannot be read as a torch checkpoint ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training-style wrapper {"model": state_dict, ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(path, "is not a state dict of tensors")

    with torch.device("meta"):  # the expected keys and shapes, without allocating weights
        expected = {key: tuple(value.shape) for key, value in build().state_dict().items()}
    problems = state_dict_problems(expected, state)
    if problems:
        hint = ""
        patch = state.get("image_encoder.patch_embed.proj.weight")
        if patch is not None and patch.ndim == 4:
            guess = _EMBED_DIM_TO_VARIANT.get(int(patch.shape[0]))
            if guess and guess != variant:
                hint = f"; it looks like a SAM {guess} checkpoint"
        raise SamCheckpointError(
            path, f"is not a SAM {variant} checkpoint: {'; '.join(problems)}{hint}")

    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # pragma: no cover - the checks above catch mismatches
        raise SamCheckpointError(path, f"does not load into SAM {variant}: {error}") from error
    return model.eval()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Axis:
    """How one image axis of the low-res logits maps to full resolution.

    Output pixel i is sum_a weights[i, a] * lowres[lo[i] + a] (a < K). The pixels sharing
    a `lo` = g form cell g: count[g] pixels from start[g]; first/last are the cell's first
    and last pixel, or (out_len, -1) for an empty cell so that it never widens a box. For
    evaluation, cells are cut into blocks of at most `block_rows` pixels: cell g's blocks
    are g_first_block[g] .. + g_blocks[g] - 1, block b starts at block_start[b] and its
    weights, padded with NaN rows (which compare false with anything), are
    block_weights[b].
    """

    count: torch.Tensor  # (lr,) int64
    count_f: torch.Tensor  # (lr,) float32, for exact small-integer matmuls
    start: torch.Tensor  # (lr,) int64
    first: torch.Tensor  # (lr,) int64
    last: torch.Tensor  # (lr,) int64
    g_first_block: torch.Tensor  # (lr,) int64
    g_blocks: torch.Tensor  # (lr,) int64
    block_start: torch.Tensor  # (blocks,) int64
    block_weights: torch.Tensor  # (blocks, block_rows, K) float32
    support: int  # K

    @property
    def one_block_per_cell(self) -> bool:
        return bool((self.g_blocks <= 1).all())


def _resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of F.interpolate(bilinear, align_corners=False) along one axis,
    read off by resizing an identity (the other axis keeps its size: an exact copy)."""
    eye = torch.eye(n_in, dtype=torch.float32, device=device)[None, None]
    resized = functional.interpolate(eye, size=(n_out, n_in), mode="bilinear",
                                     align_corners=False)
    return resized[0, 0]


def _axis(lr: int, img_size: int, input_len: int, out_len: int, device: torch.device,
          support: int | None = None) -> _Axis:
    """Sam.postprocess_masks along one axis: lr -> img_size, keep input_len, -> out_len."""
    first_resize = _resize_matrix(lr, img_size, device)[:input_len].double()
    second_resize = _resize_matrix(input_len, out_len, device).double()
    matrix = second_resize @ first_resize  # (out_len, lr); float32 weights, exact products
    nonzero = matrix != 0
    lo = nonzero.to(torch.int8).argmax(dim=1)
    hi = lr - 1 - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    if bool((lo[1:] < lo[:-1]).any()) or not bool(nonzero.any(dim=1).all()):
        raise RuntimeError("unexpected bilinear resize weights")  # pragma: no cover
    own_support = int((hi - lo + 1).max())
    k = max(own_support, support or 0)
    padded = torch.cat([matrix, matrix.new_zeros(out_len, k)], dim=1)
    weights = padded.gather(1, lo[:, None] + torch.arange(k, device=device)[None, :])

    count = torch.bincount(lo, minlength=lr)
    start = torch.cumsum(count, 0) - count
    empty = count == 0
    block_rows = -(-out_len // max(1, int((~empty).sum())))  # a typical cell's pixels
    g_blocks = -(-count // block_rows)
    g_first_block = torch.cumsum(g_blocks, 0) - g_blocks
    block_g = torch.repeat_interleave(torch.arange(lr, device=device), g_blocks)
    rank = torch.arange(block_g.numel(), device=device) - g_first_block[block_g]
    block_start = start[block_g] + rank * block_rows
    block_count = torch.clamp(count[block_g] - rank * block_rows, max=block_rows)
    offsets = torch.arange(block_rows, device=device)
    index = (block_start[:, None] + offsets[None, :]).clamp(max=out_len - 1)
    block_weights = weights[index].float()
    block_weights[offsets[None, :] >= block_count[:, None]] = float("nan")
    return _Axis(count=count, count_f=count.float(), start=start,
                 first=torch.where(empty, out_len, start),
                 last=torch.where(empty, -1, start + count - 1),
                 g_first_block=g_first_block, g_blocks=g_blocks, block_start=block_start,
                 block_weights=block_weights, support=own_support)


@dataclass(frozen=True)
class _Geometry:
    rows: _Axis
    cols: _Axis
    height: int
    width: int
    support: int  # K, the same for both axes (the larger of the two)

    @property
    def occupied(self) -> torch.Tensor:
        """(lr_h, lr_w) bool: cells that hold full-resolution pixels."""
        return (self.rows.count > 0)[:, None] & (self.cols.count > 0)[None, :]


@dataclass
class _ThresholdStats:
    """Per candidate, for one threshold t: pixels surely > t, pixels too close to t to
    decide, and (when asked) the box of the sure pixels and whether an undecided pixel
    lies outside it."""

    above: torch.Tensor  # int64 (n,)
    undecided: torch.Tensor  # int64 (n,)
    box: torch.Tensor | None = None  # int64 (n, 4) XYXY inclusive, zeros when empty
    box_unsure: torch.Tensor | None = None  # bool (n,)


def _window_extremes(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and min of x (n, h, w) over the k x k windows [g, g+k) x [j, j+k), clipped."""
    high, low = x.clone(), x.clone()
    for dim in (1, 2):
        base_high, base_low = high.clone(), low.clone()
        size = x.shape[dim]
        for shift in range(1, min(k, size)):
            keep = size - shift
            torch.maximum(high.narrow(dim, 0, keep), base_high.narrow(dim, shift, keep),
                          out=high.narrow(dim, 0, keep))
            torch.minimum(low.narrow(dim, 0, keep), base_low.narrow(dim, shift, keep),
                          out=low.narrow(dim, 0, keep))
    return high, low


class _LowRes:
    """Exact full-resolution threshold statistics of a chunk of low-res logits (n, h, w)."""

    def __init__(self, logits: torch.Tensor, geometry: _Geometry,
                 extremes: tuple[torch.Tensor, torch.Tensor] | None = None,
                 tol: torch.Tensor | None = None,
                 tolerance: float = _RELATIVE_TOLERANCE) -> None:
        k = geometry.support
        self.x = logits
        self.geometry = geometry
        self.window_max, self.window_min = extremes or _window_extremes(logits, k)
        if tol is None:  # rounding scales with the magnitudes a pixel is interpolated from
            tol = tolerance * torch.maximum(self.window_max.abs(), self.window_min.abs())
        self.tol = tol  # (n, h, w): per cell
        self.windows = functional.pad(logits, (0, k - 1, 0, k - 1)).unfold(1, k, 1).unfold(2, k, 1)

    def select(self, index: torch.Tensor) -> _LowRes:
        return _LowRes(self.x[index], self.geometry,
                       (self.window_max[index], self.window_min[index]), self.tol[index])

    def box(self, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 4) boxes of the pixels > threshold and whether each is uncertain."""
        result = self.stats(threshold, with_box=True)
        if result.box is None or result.box_unsure is None:  # pragma: no cover
            raise RuntimeError("box statistics missing")
        return result.box, result.box_unsure

    def stats(self, threshold: float, with_box: bool = False) -> _ThresholdStats:
        geometry, rows, cols = self.geometry, self.geometry.rows, self.geometry.cols
        n, device = self.x.shape[0], self.x.device
        tol = self.tol
        sure = self.window_min > threshold + tol  # every pixel of the cell is above
        band = (self.window_max >= threshold - tol) ^ sure  # cells that may straddle
        above = ((sure.float() @ cols.count_f).double() @ rows.count.double()).round().long()

        index, g, k = band.nonzero(as_tuple=True)
        occupied = (rows.count[g] > 0) & (cols.count[k] > 0)
        index, g, k = index[occupied], g[occupied], k[occupied]
        row_block, col_block = rows.g_first_block[g], cols.g_first_block[k]
        if not (rows.one_block_per_cell and cols.one_block_per_cell):
            row_blocks, col_blocks = rows.g_blocks[g], cols.g_blocks[k]
            repeats = row_blocks * col_blocks
            cell = torch.repeat_interleave(torch.arange(index.numel(), device=device), repeats)
            offset = torch.arange(cell.numel(), device=device) - (
                torch.cumsum(repeats, 0) - repeats)[cell]
            row_block = row_block[cell] + offset // col_blocks[cell]
            col_block = col_block[cell] + offset % col_blocks[cell]
            index, g, k = index[cell], g[cell], k[cell]
        window = self.windows[index, g, k]  # (m, K, K)
        # the blocks' pixels from the exact weights; NaN for padding pixels
        values = torch.bmm(torch.bmm(rows.block_weights[row_block], window),
                           cols.block_weights[col_block].transpose(1, 2))  # (m, rows, cols)
        cell_tol = self.tol[index, g, k][:, None, None]
        positive = values > threshold + cell_tol
        above = above.index_add(0, index, _per_cell(positive))
        undecided = torch.zeros(n, dtype=torch.int64, device=device)
        unsure = (values >= threshold - cell_tol) ^ positive  # |value - t| <= tol
        if bool(unsure.any()):
            undecided = undecided.index_add(0, index, _per_cell(unsure))
        result = _ThresholdStats(above=above, undecided=undecided)
        if not with_box:
            return result

        big_y, big_x = geometry.height, geometry.width
        row_ids = rows.block_start[row_block][:, None] + torch.arange(
            values.shape[1], device=device)[None]
        col_ids = cols.block_start[col_block][:, None] + torch.arange(
            values.shape[2], device=device)[None]

        def extent(hits: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
            """base (n, 4) [left, top, right, bottom] widened by the band pixels `hits`."""
            hit_rows, hit_cols = hits.any(dim=2), hits.any(dim=1)
            out = base.clone()
            for column, ids, hit, reduce, empty in (
                    (0, col_ids, hit_cols, "amin", big_x), (1, row_ids, hit_rows, "amin", big_y),
                    (2, col_ids, hit_cols, "amax", -1), (3, row_ids, hit_rows, "amax", -1)):
                per_cell = torch.where(hit, ids, empty)
                per_cell = per_cell.amin(dim=1) if reduce == "amin" else per_cell.amax(dim=1)
                out[:, column] = out[:, column].scatter_reduce(0, index, per_cell, reduce)
            return out

        sure = sure & geometry.occupied  # cells without pixels must not widen the box
        sure_rows, sure_cols = sure.any(dim=2), sure.any(dim=1)
        base = torch.stack([
            torch.where(sure_cols, cols.first, big_x).amin(dim=1),
            torch.where(sure_rows, rows.first, big_y).amin(dim=1),
            torch.where(sure_cols, cols.last, -1).amax(dim=1),
            torch.where(sure_rows, rows.last, -1).amax(dim=1),
        ], dim=1)
        box = extent(positive, base)
        nothing = torch.tensor([big_x, big_y, -1, -1], device=device).repeat(n, 1)
        doubt = extent(unsure, nothing)
        box_unsure = ((doubt[:, 0] < box[:, 0]) | (doubt[:, 1] < box[:, 1])
                      | (doubt[:, 2] > box[:, 2]) | (doubt[:, 3] > box[:, 3]))
        empty = box[:, 2] < box[:, 0]
        result.box = torch.where(empty[:, None], torch.zeros_like(box), box)
        result.box_unsure = box_unsure
        return result


def _per_cell(flags: torch.Tensor) -> torch.Tensor:
    """(m, rows, cols) bool -> (m,) int64 counts."""
    return flags.flatten(1).sum(1, dtype=torch.int32).long()


def _chunks(total: int, size: int) -> Iterator[slice]:
    for begin in range(0, total, size):
        yield slice(begin, min(total, begin + size))


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class SamMasks:
    """Everything the reference reports per mask, in its order (NMS order).

    boxes: (N, 4) int64 XYXY with inclusive pixel coordinates (the reference's `bbox` is
    this in XYWH); stability: float32 stability scores (NaN when not asked for); points:
    (N, 2) float64 (x, y)
    prompt of each mask; stats: candidate counts after each stage and how many candidates
    were upsampled to full resolution.
    """

    proposals: MaskProposals
    boxes: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    stats: dict[str, int]


class SamMaskGenerator:
    """SAM everything mode; build it with `build_sam_generator`."""

    name = "sam"

    def __init__(self, model: Sam, *, variant: str, checkpoint: Path | None,
                 device: torch.device, points_per_side: int, points_per_batch: int | None,
                 pred_iou_thresh: float, stability_score_thresh: float,
                 stability_score_offset: float, box_nms_thresh: float, long_side: int,
                 min_mask_region_area: int) -> None:
        img_size = int(model.image_encoder.img_size)
        if long_side > img_size or long_side < 1:
            raise ValueError(f"long_side must be in 1..{img_size} (the SAM encoder's input "
                             f"size), got {long_side}")
        if min_mask_region_area < 0:
            raise ValueError("min_mask_region_area must be >= 0")
        self._setup(model, variant, checkpoint, device, points_per_side, points_per_batch,
                    pred_iou_thresh, stability_score_thresh, stability_score_offset,
                    box_nms_thresh)
        self.long_side = int(long_side)
        self.min_mask_region_area = int(min_mask_region_area)

    def _setup(self, model: torch.nn.Module, variant: str, checkpoint: Path | None,
               device: torch.device, points_per_side: int, points_per_batch: int | None,
               pred_iou_thresh: float, stability_score_thresh: float,
               stability_score_offset: float, box_nms_thresh: float) -> None:
        """What SAM and SAM 2.1 (a subclass) set up alike: the everything-mode settings
        and the caches of the shared decode pipeline."""
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        if points_per_batch is not None and points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1 or None, got {points_per_batch}")
        self.model = model.to(device).eval()
        self.variant = variant
        self.checkpoint = checkpoint
        self.device = device
        self.points_per_side = int(points_per_side)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        # checks and benchmarks: False runs the reference's full-resolution filters; a larger
        # tolerance sends more candidates down the exact fallback
        self.low_res_prefilter = True
        self.tolerance = _RELATIVE_TOLERANCE
        self._geometries: dict[tuple, _Geometry] = {}
        self._auto_batch: int | None = None
        gpu = device.type == "cuda"  # bigger steps: fewer kernel launches, memory to spare
        self._low_res_chunk_elements = _LOW_RES_CHUNK_ELEMENTS * (4 if gpu else 1)
        self._full_res_chunk_elements = _FULL_RES_CHUNK_ELEMENTS * (4 if gpu else 1)
        self._fingerprint: str | None = None
        self._checkpoint_bytes = checkpoint.stat().st_size if checkpoint is not None else None

    # ----------------------------------------------------------------- settings

    @property
    def precision(self) -> str:
        if self.device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

    def config(self) -> dict:
        return self._settings({"encoder_img_size": int(self.model.image_encoder.img_size)},
                              {"long_side": self.long_side,
                               "min_mask_region_area": self.min_mask_region_area})

    def _settings(self, input_size: dict[str, int], extra: dict[str, Any]) -> dict:
        """What decides the masks, for caches and run.json; SAM 2.1 shares all but the
        input size and SAM's long side and small-region removal."""
        settings: dict[str, Any] = {
            "name": self.name,
            "variant": self.variant,
            "checkpoint": self.checkpoint.name if self.checkpoint is not None else None,
            "checkpoint_bytes": self._checkpoint_bytes,
            **input_size,
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset,
            "box_nms_thresh": self.box_nms_thresh,
            **extra,
            "precision": self.precision,
        }
        if self.checkpoint is None:  # an in-memory model: identify it by its weights
            if self._fingerprint is None:
                self._fingerprint = model_fingerprint(self.model)
            settings["model_sha256"] = self._fingerprint
        return settings

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    # ----------------------------------------------------------------- generation

    def generate(self, image: np.ndarray) -> MaskProposals:
        return self.generate_detailed(image, with_stability=False).proposals

    @torch.inference_mode()
    def generate_detailed(self, image: np.ndarray, with_stability: bool = True) -> SamMasks:
        """The proposals plus the reference's per-mask records. with_stability=False skips
        the output masks' stability scores (NaN then), which some masks can only get at
        full resolution; the stability *filter* is exact either way."""
        from segment_anything.utils.amg import build_point_grid

        image = _check_image(image)
        height, width = image.shape[:2]
        features, input_size = self._encode(image)
        points = build_point_grid(self.points_per_side) * np.array([[width, height]])
        low_res, iou = self._decode(features, points, (height, width))
        del features
        candidates = torch.arange(iou.shape[0], device=self.device)
        stats = {"candidates": int(candidates.numel())}

        if self.pred_iou_thresh > 0.0:
            candidates = candidates[iou > self.pred_iou_thresh]
        stats["after_iou"] = int(candidates.numel())

        geometry = self._geometry(low_res.shape[-2:], input_size, (height, width))
        (candidates, boxes), upsampled = self._filter(low_res, candidates, geometry, input_size)
        stats["after_stability"] = int(candidates.numel())

        from torchvision.ops import batched_nms

        keep = batched_nms(boxes.float(), iou[candidates],
                           torch.zeros_like(iou[candidates]), iou_threshold=self.box_nms_thresh)
        candidates, boxes = candidates[keep], boxes[keep]
        stats["after_nms"] = int(candidates.numel())

        if with_stability:
            stability, unknown = self._survivor_stability(low_res, candidates, geometry)
        else:
            stability = torch.full((int(candidates.numel()),), float("nan"), device=self.device)
            unknown = torch.zeros(int(candidates.numel()), dtype=torch.bool, device=self.device)
        masks, areas, stability = self._full_res(low_res, candidates, input_size,
                                                 (height, width), stability, unknown)
        stats["upsampled"] = upsampled + int(candidates.numel())
        scores = iou[candidates].float().cpu().numpy()
        boxes_np = boxes.cpu().numpy().astype(np.int64)
        prompt_points = points[(candidates // 3).cpu().numpy()]
        if self.min_mask_region_area > 0 and len(masks):
            masks, scores, boxes_np, stability, prompt_points = _remove_small_regions_all(
                masks, scores, boxes_np, stability, prompt_points, self.min_mask_region_area,
                max(self.box_nms_thresh, 0.7))
            areas = masks.reshape(len(masks), -1).sum(axis=1).astype(np.int64)
        stats["masks"] = int(masks.shape[0])
        proposals = MaskProposals(masks=masks, scores=scores, areas=areas)
        return SamMasks(proposals=proposals, boxes=boxes_np, stability=stability,
                        points=prompt_points, stats=stats)

    def _encode(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SamPredictor.set_image, with a free long side (<= the encoder's input size)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        if self.model.image_format != "RGB":
            image = image[..., ::-1]
        resized = ResizeLongestSide(self.long_side).apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        with self._autocast():
            features = self.model.image_encoder(self.model.preprocess(tensor))
        return features, input_size

    def _decode(self, features: torch.Tensor, points: np.ndarray,
                image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """All prompts through SamPredictor.predict_torch's prompt encoder and mask decoder
        (multimask output), minus its upsampling. Returns (3P, h, w) float32 low-res logits
        and (3P,) float32 predicted IoU, in the reference's order (point-major)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        coords = ResizeLongestSide(self.long_side).apply_coords(points, image_size)
        # float64 like the reference: the prompt encoder normalises before casting
        in_points = torch.as_tensor(coords, device=self.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
        return self._decode_all(features, in_points, in_labels)

    def _decode_all(self, features: Any, in_points: torch.Tensor, in_labels: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every prompt in batches of ``points_per_batch``; None: all points at
        once on cuda (halved on out-of-memory, and remembered)."""
        if self.points_per_batch is not None:
            return self._decode_batches(features, in_points, in_labels, self.points_per_batch)
        batch = self._auto_batch or (len(in_points) if self.device.type == "cuda"
                                     else _CPU_POINTS_PER_BATCH)
        while True:
            try:
                result = self._decode_batches(features, in_points, in_labels, batch)
            except torch.cuda.OutOfMemoryError:
                if batch <= 1:
                    raise
                batch = (batch + 1) // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            self._auto_batch = batch
            return result

    def _decode_batches(self, features: torch.Tensor, in_points: torch.Tensor,
                        in_labels: torch.Tensor, batch: int,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        from zsplg.masks.sam_decoder import decode_point_prompts  # imports segment-anything

        prompt_encoder, decoder = self.model.prompt_encoder, self.model.mask_decoder
        low_res, iou = [], []
        with self._autocast():
            dense_pe = prompt_encoder.get_dense_pe()
            for part in _chunks(int(in_points.shape[0]), batch):
                sparse, dense = prompt_encoder(
                    points=(in_points[part, None, :], in_labels[part, None]), boxes=None,
                    masks=None)
                masks, scores = decode_point_prompts(decoder, features, dense_pe, sparse, dense,
                                                     multimask_output=True)
                low_res.append(masks.float().flatten(0, 1))
                iou.append(scores.float().flatten(0, 1))
                del masks, scores, sparse, dense
        return torch.cat(low_res), torch.cat(iou)

    def _geometry(self, low_res_size: torch.Size, input_size: tuple[int, int],
                  image_size: tuple[int, int]) -> _Geometry:
        img_size = int(self.model.image_encoder.img_size)
        shapes = [(int(low_res_size[axis]), img_size, input_size[axis], image_size[axis])
                  for axis in (0, 1)]
        key = tuple(shapes)
        if key not in self._geometries:
            rows, cols = (_axis(*shape, self.device) for shape in shapes)
            k = max(rows.support, cols.support)
            if rows.support != cols.support:  # pad the narrower axis' weights to K
                rows, cols = (_axis(*shape, self.device, support=k) for shape in shapes)
            if len(self._geometries) >= 8:
                self._geometries.clear()
            self._geometries[key] = _Geometry(rows=rows, cols=cols, height=image_size[0],
                                              width=image_size[1], support=k)
        return self._geometries[key]

    def _postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                     image_size: tuple[int, int]) -> torch.Tensor:
        return self.model.postprocess_masks(low_res[:, None], input_size, image_size)[:, 0]

    def _full_res_chunk(self, image_size: tuple[int, int]) -> int:
        img_size = int(self.model.image_encoder.img_size)
        per_mask = img_size * img_size + image_size[0] * image_size[1]
        return max(1, self._full_res_chunk_elements // per_mask)

    def _filter(self, low_res: torch.Tensor, candidates: torch.Tensor, geometry: _Geometry,
                input_size: tuple[int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        """The stability filter and the boxes of its survivors, exactly as the reference
        computes them on full-resolution logits. Returns ((survivors, boxes), number of
        candidates that had to be upsampled)."""
        image_size = (geometry.height, geometry.width)
        if not self.low_res_prefilter:  # the reference's way, chunked
            kept, boxes = self._full_res_filter(low_res, candidates, input_size, image_size)
            return (kept, boxes), int(candidates.numel())

        threshold = float(self.model.mask_threshold)
        offset = self.stability_score_offset
        low_chunk = max(1, self._low_res_chunk_elements // (low_res.shape[-2] * low_res.shape[-1]))
        kept, boxes, fallback = [], [], []
        for part in _chunks(int(candidates.numel()), low_chunk):
            chosen = candidates[part]
            exact = _LowRes(low_res[chosen], geometry, tolerance=self.tolerance)
            if self.stability_score_thresh > 0.0:
                high = exact.stats(threshold + offset)
                low = exact.stats(threshold - offset)
                keep, unsure = _stability_decision(high, low, self.stability_score_thresh)
                fallback.append(chosen[unsure])
                keep_index = keep.nonzero(as_tuple=True)[0]
                chosen = chosen[keep_index]
                if chosen.numel() == 0:
                    continue
                exact = exact.select(keep_index)
            box, box_unsure = exact.box(threshold)
            kept.append(chosen[~box_unsure])
            boxes.append(box[~box_unsure])
            fallback.append(chosen[box_unsure])

        # candidates whose decision or box hinges on a pixel within rounding of a threshold
        pending = _cat_long(fallback, self.device)
        exact_kept, exact_boxes = self._full_res_filter(low_res, pending, input_size, image_size)
        survivors = torch.cat([_cat_long(kept, self.device), exact_kept])
        all_boxes = torch.cat([_cat_long(boxes, self.device, 4), exact_boxes])
        order = torch.argsort(survivors)  # back to the reference's candidate order
        return (survivors[order], all_boxes[order]), int(pending.numel())

    def _full_res_filter(self, low_res: torch.Tensor, candidates: torch.Tensor,
                         input_size: tuple[int, int], image_size: tuple[int, int],
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's stability filter and boxes on upsampled logits, in chunks."""
        from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

        threshold = float(self.model.mask_threshold)
        kept, boxes = [], []
        for part in _chunks(int(candidates.numel()), self._full_res_chunk(image_size)):
            chosen = candidates[part]
            logits = self._postprocess(low_res[chosen], input_size, image_size)
            if self.stability_score_thresh > 0.0:
                score = calculate_stability_score(logits, threshold, self.stability_score_offset)
                keep = score >= self.stability_score_thresh
                chosen, logits = chosen[keep], logits[keep]
            kept.append(chosen)
            boxes.append(batched_mask_to_box(logits > threshold))
        return _cat_long(kept, self.device), _cat_long(boxes, self.device, 4)

    def _survivor_stability(self, low_res: torch.Tensor, candidates: torch.Tensor,
                            geometry: _Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """The survivors' stability scores from their low-res logits, and which of them
        hinge on an undecidable pixel (those are computed at full resolution)."""
        threshold = float(self.model.mask_threshold)
        offset = self.stability_score_offset
        low_chunk = max(1, self._low_res_chunk_elements // (low_res.shape[-2] * low_res.shape[-1]))
        values, unknown = [], []
        for part in _chunks(int(candidates.numel()), low_chunk):
            exact = _LowRes(low_res[candidates[part]], geometry, tolerance=self.tolerance)
            high, low = exact.stats(threshold + offset), exact.stats(threshold - offset)
            values.append(high.above.to(torch.int32) / low.above.to(torch.int32))
            unknown.append((high.undecided > 0) | (low.undecided > 0))
        if not values:
            return (torch.zeros(0, device=self.device),
                    torch.zeros(0, dtype=torch.bool, device=self.device))
        return torch.cat(values), torch.cat(unknown)

    def _full_res(self, low_res: torch.Tensor, candidates: torch.Tensor,
                  input_size: tuple[int, int], image_size: tuple[int, int],
                  stability: torch.Tensor, unknown: torch.Tensor,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Binary full-resolution masks of the survivors (straight into one numpy array),
        their areas, and their stability scores with the unknown ones filled in."""
        from segment_anything.utils.amg import calculate_stability_score

        threshold = float(self.model.mask_threshold)
        count = int(candidates.numel())
        masks = np.empty((count, *image_size), dtype=bool)
        areas = np.empty(count, dtype=np.int64)
        stability = stability.clone()
        for part in _chunks(count, self._full_res_chunk(image_size)):
            logits = self._postprocess(low_res[candidates[part]], input_size, image_size)
            todo = unknown[part]
            if bool(todo.any()):
                stability[part][todo] = calculate_stability_score(
                    logits[todo], threshold, self.stability_score_offset)
            target = torch.from_numpy(masks[part])
            if logits.device.type == "cpu":
                torch.gt(logits, threshold, out=target)
                areas[part] = np.count_nonzero(masks[part].reshape(len(target), -1), axis=1)
            else:
                binary = logits > threshold
                areas[part] = binary.flatten(1).sum(1).cpu().numpy()
                target.copy_(binary)
        return masks, areas, stability.float().cpu().numpy()


def _cat_long(parts: list[torch.Tensor], device: torch.device, width: int = 0) -> torch.Tensor:
    if parts:
        return torch.cat(parts)
    shape = (0, width) if width else (0,)
    return torch.zeros(shape, dtype=torch.int64, device=device)


def _stability_decision(high: _ThresholdStats, low: _ThresholdStats,
                        thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """keep and unsure flags for `stability >= thresh`, stability = #(>t+o) / #(>t-o) in
    float32 like segment-anything's calculate_stability_score."""
    intersections = high.above.to(torch.int32)
    unions = low.above.to(torch.int32)
    exact = (high.undecided == 0) & (low.undecided == 0)
    keep_exact = (intersections / unions) >= thresh
    smallest = intersections / (unions + low.undecided.to(torch.int32))
    largest = (intersections + high.undecided.to(torch.int32)) / unions
    keep_sure = smallest >= thresh
    drop_sure = (unions > 0) & (largest < thresh)
    keep = torch.where(exact, keep_exact, keep_sure)
    unsure = ~exact & ~keep_sure & ~drop_sure
    return keep & ~unsure, unsure


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("empty image")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- small regions


def remove_small_regions(mask: np.ndarray, area_thresh: float,
                         mode: str) -> tuple[np.ndarray, bool]:
    """segment_anything.utils.amg.remove_small_regions with scipy instead of OpenCV
    (8-connected components, labelled in raster order like cv2)."""
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = correct_holes ^ mask
    regions, n_regions = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = [i + 1 for i, size in enumerate(sizes) if size < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n_regions + 1) if i not in fill]
        if not fill:  # every region is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def _remove_small_regions_all(masks: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                              stability: np.ndarray, points: np.ndarray, min_area: int,
                              nms_thresh: float) -> tuple[np.ndarray, ...]:
    """SamAutomaticMaskGenerator.postprocess_small_regions on binary masks."""
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import batched_nms

    cleaned, unchanged = [], []
    for mask in masks:
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        unchanged.append(float(not (changed_holes or changed_islands)))
    stack = np.stack(cleaned)
    new_boxes = batched_mask_to_box(torch.as_tensor(stack))
    keep = batched_nms(new_boxes.float(), torch.as_tensor(unchanged),
                       torch.zeros(len(stack)), iou_threshold=nms_thresh).numpy()
    boxes = boxes.copy()
    changed = np.array(unchanged) == 0.0
    boxes[changed] = new_boxes.numpy()[changed]
    return stack[keep], scores[keep], boxes[keep], stability[keep], points[keep]


# --------------------------------------------------------------------------- builder


def build_sam_generator(variant: str = "vit_b", checkpoint: str | Path | None = None,
                        model: Sam | None = None, device: str | torch.device = "auto",
                        points_per_side: int = 32, points_per_batch: int | None = None,
                        pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                        stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                        long_side: int = 1024, min_mask_region_area: int = 0,
                        ) -> SamMaskGenerator:
    """SAM everything-mode generator (masks equal to SamAutomaticMaskGenerator's).

    variant: "vit_b", "vit_l" or "vit_h". checkpoint: the weights file; None -> the file
    `zsplg weights fetch sam-vit-b` (etc.) stores (WeightsMissingError when absent). model:
    an already-built `segment_anything.modeling.Sam` (then checkpoint, if given, only names
    the file it came from in config()). device: "auto" (cuda, else cpu) or any torch device;
    on cuda the encoder and decoder run under bf16 (fp16 where bf16 is unsupported)
    autocast. points_per_batch: prompts per decoder call; None -> all points at once on cuda
    (about 14 MB of bf16 activations per point for the full-size decoder), 64 on cpu.
    long_side: the image's long side for the encoder (<= its input size, 1024 for the
    official models; the reference always uses the input size). min_mask_region_area > 0:
    the reference's hole and island removal (with scipy instead of OpenCV).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {', '.join(SAM_VARIANTS)}")
    checkpoint_path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if model is None:
        from zsplg.runtime.weights import resolve_weights

        checkpoint_path = resolve_weights(f"sam-{variant.replace('_', '-')}", checkpoint,
                                          option_hint="--sam-checkpoint PATH")
        model = load_sam_checkpoint(variant, checkpoint_path)
    elif checkpoint_path is not None and not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint file")
    return SamMaskGenerator(
        model, variant=variant, checkpoint=checkpoint_path, device=resolve_device(device),
        points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
        long_side=long_side, min_mask_region_area=min_mask_region_area)
