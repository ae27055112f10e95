"""SAM everything-mode masks on the official `segment-anything` package, built for throughput.

The pipeline is `SamAutomaticMaskGenerator`'s (one crop layer, binary masks): the same
candidates, the same predicted-IoU and stability filters, the same box NMS, and masks,
scores and boxes in its order. They agree with the reference's up to float rounding, not
bit for bit: the restructured decoder (zsplg.masks.sam.decoder) sums in another order,
so logits differ in their last bits and a pixel whose logit lies at the threshold can
fall the other way. What changes is where the work goes. The reference decodes the
point grid 64 prompts at a time and upsamples *every* candidate's 256 x 256 logits to
the full image (two bilinear resizes: to the encoder's 1024 square, then to the original
size) before it filters, then RLE-encodes the survivors in Python. Here:

1. the image is encoded once (on CUDA, the encoder under bf16 autocast by default; see
   ``precision``) and all grid points are decoded in one batch, in fp32, through the
   predictor's prompt encoder and mask decoder minus `predict_torch`'s upsampling;
2. the predicted-IoU filter runs on the decoder's scores, before any upsampling;
3. the stability score, and for its survivors the box that NMS needs, are computed from
   the LOW-RESOLUTION logits (zsplg.masks.sam.engine), with the decisions and boxes
   full-resolution logits would give; a candidate whose decision or box could hinge on
   a pixel within float rounding of a threshold takes the reference path
   (full-resolution `postprocess_masks`);
4. box NMS runs on those boxes, and only the NMS survivors are upsampled to full resolution,
   with the model's own `postprocess_masks`, straight into the output array.

So the full-resolution work scales with the number of output masks, not with 3 x points.
SAM 2.1 (zsplg.masks.sam2) subclasses this generator and reuses the whole pipeline.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zsplg.masks.base import MaskProposals
from zsplg.masks.sam.checkpoint import (
    SAM_VARIANTS,
    load_sam_checkpoint,
    model_and_checkpoint,
    model_fingerprint,
)
from zsplg.masks.sam.engine import (
    RELATIVE_TOLERANCE,
    Geometry,
    LowResLogits,
    build_geometry,
    chunks,
    stability_decision,
)
from zsplg.masks.sam.regions import postprocess_small_regions
from zsplg.runtime.device import autocast_for, resolve_device, resolve_precision

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

__all__ = ["SamMaskGenerator", "SamMasks", "build_sam_generator"]

_CPU_POINTS_PER_BATCH = 64  # bounds the full-size decoder's activations on the CPU
_LOW_RES_CHUNK_ELEMENTS = 1 << 23  # low-res logits handled per step of the low-res filters
_FULL_RES_CHUNK_ELEMENTS = 1 << 25  # full-resolution logits materialised per step


@dataclass(frozen=True)
class SamMasks:
    """Everything the reference reports per mask, in its order (NMS order).

    boxes: (N, 4) int64 XYXY with inclusive pixel coordinates (the reference's `bbox` is
    this in XYWH); stability: float32 stability scores (NaN when not asked for); points:
    (N, 2) float64 (x, y) prompt of each mask; stats: candidate counts after each stage
    and how many candidates were upsampled to full resolution.
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
                 min_mask_region_area: int, precision: str = "auto") -> None:
        img_size = int(model.image_encoder.img_size)
        if long_side > img_size or long_side < 1:
            raise ValueError(f"long_side must be in 1..{img_size} (the SAM encoder's input "
                             f"size), got {long_side}")
        if min_mask_region_area < 0:
            raise ValueError("min_mask_region_area must be >= 0")
        self._setup(model, variant, checkpoint, device, points_per_side, points_per_batch,
                    pred_iou_thresh, stability_score_thresh, stability_score_offset,
                    box_nms_thresh, precision)
        self.long_side = int(long_side)
        self.min_mask_region_area = int(min_mask_region_area)

    def _setup(self, model: torch.nn.Module, variant: str, checkpoint: Path | None,
               device: torch.device, points_per_side: int, points_per_batch: int | None,
               pred_iou_thresh: float, stability_score_thresh: float,
               stability_score_offset: float, box_nms_thresh: float,
               precision: str = "auto") -> None:
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
        # the image encoder's precision; decoding and every filter decision stay fp32
        self.precision = resolve_precision(precision, device)
        self.points_per_side = int(points_per_side)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        # checks and benchmarks: False runs the reference's full-resolution filters; a larger
        # tolerance sends more candidates down the full-resolution fallback
        self.low_res_prefilter = True
        self.tolerance = RELATIVE_TOLERANCE
        self._geometries: dict[tuple, Geometry] = {}
        self._auto_batch: int | None = None
        gpu = device.type == "cuda"  # bigger steps: fewer kernel launches, memory to spare
        self._low_res_chunk_elements = _LOW_RES_CHUNK_ELEMENTS * (4 if gpu else 1)
        self._full_res_chunk_elements = _FULL_RES_CHUNK_ELEMENTS * (4 if gpu else 1)
        self._fingerprint: str | None = None
        self._checkpoint_bytes = checkpoint.stat().st_size if checkpoint is not None else None

    # ----------------------------------------------------------------- settings

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
        """For the image encoder only: its outputs are cast back to fp32 before decoding,
        so the predicted-IoU, stability and NMS decisions are made on fp32 values."""
        return autocast_for(self.precision, self.device)

    # ----------------------------------------------------------------- generation

    def generate(self, image: np.ndarray) -> MaskProposals:
        return self.generate_detailed(image, with_stability=False).proposals

    @torch.inference_mode()
    def generate_detailed(self, image: np.ndarray, with_stability: bool = True) -> SamMasks:
        """The proposals plus the reference's per-mask records. with_stability=False skips
        the output masks' stability scores (NaN then), which some masks can only get at
        full resolution; the stability *filter* runs either way."""
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
            masks, scores, boxes_np, stability, prompt_points = postprocess_small_regions(
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
        return features.float(), input_size

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
        from zsplg.masks.sam.decoder import decode_point_prompts  # imports segment-anything

        prompt_encoder, decoder = self.model.prompt_encoder, self.model.mask_decoder
        low_res, iou = [], []
        dense_pe = prompt_encoder.get_dense_pe()
        for part in chunks(int(in_points.shape[0]), batch):
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
                  image_size: tuple[int, int]) -> Geometry:
        """The low-res -> image map of this input and image size, cached (a dataset's
        images mostly share a few sizes)."""
        shapes = self._resize_shapes(low_res_size, input_size, image_size)
        key = tuple(shapes)
        if key not in self._geometries:
            if len(self._geometries) >= 8:
                self._geometries.clear()
            self._geometries[key] = build_geometry(shapes, self.device, *image_size)
        return self._geometries[key]

    def _resize_shapes(self, low_res_size: torch.Size, input_size: tuple[int, int],
                       image_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Sam.postprocess_masks per axis: low-res -> the encoder's square input, keep the
        resized image's part, -> the image (see engine.build_geometry)."""
        img_size = int(self.model.image_encoder.img_size)
        return [(int(low_res_size[axis]), img_size, input_size[axis], image_size[axis])
                for axis in (0, 1)]

    def _postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                     image_size: tuple[int, int]) -> torch.Tensor:
        return self.model.postprocess_masks(low_res[:, None], input_size, image_size)[:, 0]

    def _full_res_chunk(self, image_size: tuple[int, int]) -> int:
        img_size = int(self.model.image_encoder.img_size)
        per_mask = img_size * img_size + image_size[0] * image_size[1]
        return max(1, self._full_res_chunk_elements // per_mask)

    def _filter(self, low_res: torch.Tensor, candidates: torch.Tensor, geometry: Geometry,
                input_size: tuple[int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        """The stability filter and the boxes of its survivors, as the reference computes
        them on full-resolution logits (the same decisions, given the same logits).
        Returns ((survivors, boxes), number of candidates that had to be upsampled)."""
        image_size = (geometry.height, geometry.width)
        if not self.low_res_prefilter:  # the reference's way, chunked
            kept, boxes = self._full_res_filter(low_res, candidates, input_size, image_size)
            return (kept, boxes), int(candidates.numel())

        threshold = float(self.model.mask_threshold)
        offset = self.stability_score_offset
        low_chunk = max(1, self._low_res_chunk_elements // (low_res.shape[-2] * low_res.shape[-1]))
        kept, boxes, fallback = [], [], []
        for part in chunks(int(candidates.numel()), low_chunk):
            chosen = candidates[part]
            exact = LowResLogits(low_res[chosen], geometry, tolerance=self.tolerance)
            if self.stability_score_thresh > 0.0:
                high = exact.stats(threshold + offset)
                low = exact.stats(threshold - offset)
                keep, unsure = stability_decision(high, low, self.stability_score_thresh)
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
        for part in chunks(int(candidates.numel()), self._full_res_chunk(image_size)):
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
                            geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """The survivors' stability scores from their low-res logits, and which of them
        hinge on an undecidable pixel (those are computed at full resolution)."""
        threshold = float(self.model.mask_threshold)
        offset = self.stability_score_offset
        low_chunk = max(1, self._low_res_chunk_elements // (low_res.shape[-2] * low_res.shape[-1]))
        values, unknown = [], []
        for part in chunks(int(candidates.numel()), low_chunk):
            exact = LowResLogits(low_res[candidates[part]], geometry, tolerance=self.tolerance)
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
        for part in chunks(count, self._full_res_chunk(image_size)):
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



def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("empty image")
    return np.ascontiguousarray(image)



def build_sam_generator(variant: str = "vit_b", checkpoint: str | Path | None = None,
                        model: Sam | None = None, device: str | torch.device = "auto",
                        points_per_side: int = 32, points_per_batch: int | None = None,
                        pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                        stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                        long_side: int = 1024, min_mask_region_area: int = 0,
                        precision: str = "auto") -> SamMaskGenerator:
    """SAM everything-mode generator (SamAutomaticMaskGenerator's masks, up to the float
    rounding of the restructured decoder).

    variant: "vit_b", "vit_l" or "vit_h". checkpoint: the weights file; None -> the file
    `zsplg weights fetch sam-vit-b` (etc.) stores (WeightsMissingError when absent). model:
    an already-built `segment_anything.modeling.Sam` (then checkpoint, if given, only names
    the file it came from in config()). device: "auto" (cuda, else cpu) or any torch device.
    precision: the image encoder's, "auto" (bf16 on cuda, fp16 where bf16 is unsupported,
    fp32 elsewhere), "fp32", "bf16" or "fp16"; the decoder and the filter decisions are
    fp32 whatever it is, and "fp32" gives the reference's masks (to float rounding) on
    any device. points_per_batch: prompts per decoder call; None -> all points at once on cuda
    (halved on out-of-memory), 64 on cpu.
    long_side: the image's long side for the encoder (<= its input size, 1024 for the
    official models; the reference always uses the input size). min_mask_region_area > 0:
    the reference's hole and island removal (with scipy instead of OpenCV).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {', '.join(SAM_VARIANTS)}")
    model, checkpoint_path = model_and_checkpoint(
        model, checkpoint, f"sam-{variant.replace('_', '-')}",
        lambda path: load_sam_checkpoint(variant, path))
    return SamMaskGenerator(
        model, variant=variant, checkpoint=checkpoint_path,
        device=torch.device(resolve_device(str(device))),
        points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
        long_side=long_side, min_mask_region_area=min_mask_region_area, precision=precision)
