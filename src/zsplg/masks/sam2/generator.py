"""SAM 2.1 everything-mode masks: the fast tier, on Meta's `sam2` package.

The image is embedded by `SAM2ImagePredictor.set_image`, so preprocessing and features
are the library's own. The everything mode then runs the pipeline of
zsplg.masks.sam.generator (this generator subclasses it): every grid point decoded in
large batches (through zsplg.masks.sam2.decoder, which is much cheaper on the CPU than
the library's decoder; any other decoder is called as it is), the predicted-IoU filter
on the decoder's scores, the stability filter and boxes from the LOW-RESOLUTION logits
(zsplg.masks.sam.engine; the full-resolution map is one bilinear resize here, a special
case of SAM's two), NMS, and only the survivors upsampled.

The pipeline is `SAM2AutomaticMaskGenerator`'s (one crop layer, `use_m2m=False`, binary
masks): given the same decoder outputs, the same masks, predicted IoUs, stability scores
and boxes, in its order; through the restructured decoder, which sums in another order,
they agree up to float rounding (tests/test_sam2_generator.py checks both).

What differs from SAM (v1): SAM 2 resizes the image to its square input (1024 px for the
official models), so there is no `long_side` setting; the mask binarisation threshold is
the predictor's 0.0 (`SAM2AutomaticMaskGenerator`'s default); the reference's
`min_mask_region_area` is a low-resolution hole and sprinkle fill that needs sam2's CUDA
extension (skipped with a warning without it), so it is not offered here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional

from zsplg.masks.sam.checkpoint import model_and_checkpoint
from zsplg.masks.sam.engine import chunks
from zsplg.masks.sam.generator import SamMaskGenerator
from zsplg.masks.sam2.checkpoint import load_sam2_checkpoint, sam2_variant
from zsplg.runtime.device import resolve_device

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

__all__ = ["Sam2MaskGenerator", "build_sam2_generator"]


class Sam2MaskGenerator(SamMaskGenerator):
    """SAM 2.1 everything mode; build it with `build_sam2_generator`."""

    name = "sam2"

    def __init__(self, model: SAM2Base, *, variant: str, checkpoint: Path | None,
                 device: torch.device, points_per_side: int, points_per_batch: int | None,
                 pred_iou_thresh: float, stability_score_thresh: float,
                 stability_score_offset: float, box_nms_thresh: float,
                 precision: str = "auto") -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        # the shared pipeline binarises at model.mask_threshold, which SAM's model class
        # carries and SAM2Base does not: SAM 2's predictor and generator use 0.0 as well
        if not hasattr(model, "mask_threshold"):
            model.mask_threshold = 0.0
        self._setup(model, variant, checkpoint, device, points_per_side, points_per_batch,
                    pred_iou_thresh, stability_score_thresh, stability_score_offset,
                    box_nms_thresh, precision)
        self.image_size = int(model.image_size)
        self.long_side = self.image_size  # SAM 2 always resizes to its square input
        self.min_mask_region_area = 0  # see the module docstring
        with warnings.catch_warnings():  # its transforms use the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            self.predictor = SAM2ImagePredictor(self.model)
        # the predictor assumes the 1024 px models' feature sizes; take the model's own
        side = int(model.sam_image_embedding_size)
        self.predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side),
                                         (side, side)]

    def config(self) -> dict:
        return self._settings({"image_size": self.image_size}, {})

    # ----------------------------------------------------------------- model calls

    def _encode(self, image: np.ndarray) -> tuple[dict, tuple[int, int]]:
        """SAM2ImagePredictor.set_image; returns its features and the model's input size."""
        if not image.flags.writeable:  # torchvision's to_tensor warns on read-only arrays
            image = image.copy()
        with self._autocast():
            self.predictor.set_image(image)
        features = self.predictor._features
        self.predictor.reset_predictor()
        # decode in fp32 (see SamMaskGenerator._autocast): the filters decide on its values
        features = {"image_embed": features["image_embed"].float(),
                    "high_res_feats": [f.float() for f in features["high_res_feats"]]}
        return features, (self.image_size, self.image_size)

    def _decode(self, features: dict, points: np.ndarray,
                image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """All prompts through the prompt encoder and mask decoder as
        SAM2ImagePredictor._predict runs them (multimask output), minus its upsampling.
        Returns (3P, h, w) float32 low-res logits (unclamped, as the reference upsamples
        them) and (3P,) float32 predicted IoU, in the reference's order."""
        coords = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        in_points = self.predictor._transforms.transform_coords(coords, normalize=True,
                                                                orig_hw=image_size)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
        return self._decode_all(features, in_points, in_labels)

    def _decode_batches(self, features: dict, in_points: torch.Tensor,
                        in_labels: torch.Tensor, batch: int,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        from zsplg.masks.sam2.decoder import decode_sam2_point_prompts

        prompt_encoder = self.model.sam_prompt_encoder
        decoder = self.model.sam_mask_decoder
        image_embed = features["image_embed"]
        high_res = list(features["high_res_feats"])
        low_res, iou = [], []
        dense_pe = prompt_encoder.get_dense_pe()
        for part in chunks(int(in_points.shape[0]), batch):
            sparse, dense = prompt_encoder(
                points=(in_points[part, None, :], in_labels[part, None]), boxes=None,
                masks=None)
            masks, scores = decode_sam2_point_prompts(decoder, image_embed, dense_pe,
                                                      sparse, dense, high_res)
            low_res.append(masks.float().flatten(0, 1))
            iou.append(scores.float().flatten(0, 1))
            del masks, scores, sparse, dense
        return torch.cat(low_res), torch.cat(iou)

    # ----------------------------------------------------------------- geometry

    def _resize_shapes(self, low_res_size: torch.Size, input_size: tuple[int, int],
                       image_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """SAM2Transforms.postprocess_masks is ONE bilinear resize, low-res -> image: the
        SAM pipeline's two resizes with an identity first one (lr -> lr, exact)."""
        return [(int(low_res_size[axis]), int(low_res_size[axis]), int(low_res_size[axis]),
                 image_size[axis]) for axis in (0, 1)]

    def _postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                     image_size: tuple[int, int]) -> torch.Tensor:
        """SAM2Transforms.postprocess_masks without its (CUDA-only) hole filling."""
        return functional.interpolate(low_res[:, None].float(), image_size, mode="bilinear",
                                      align_corners=False)[:, 0]

    def _full_res_chunk(self, image_size: tuple[int, int]) -> int:
        return max(1, self._full_res_chunk_elements // (image_size[0] * image_size[1]))


def build_sam2_generator(variant: str = "tiny", checkpoint: str | Path | None = None,
                         model: SAM2Base | None = None, device: str | torch.device = "auto",
                         points_per_side: int = 32, points_per_batch: int | None = None,
                         pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                         stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                         precision: str = "auto") -> Sam2MaskGenerator:
    """SAM 2.1 everything-mode generator (SAM2AutomaticMaskGenerator's masks, up to the
    float rounding of the restructured decoder).

    variant: "tiny" or "small". checkpoint: the weights file (official layout,
    {"model": state_dict}); None -> the file `zsplg weights fetch sam2.1-hiera-tiny` (or
    -small) stores (WeightsMissingError when absent). model: an already-built sam2
    `SAM2Base` (then checkpoint, if given, only names the file it came from in config()).
    device: "auto" (cuda, else cpu) or any torch device. precision: the image encoder's,
    as for SAM ("auto": bf16 on cuda, as SAM 2's own examples run, fp32 elsewhere); the
    decoder and the filter decisions are fp32.
    points_per_batch: prompts per decoder call; None -> all at once on cuda (halved on
    out-of-memory), 64 on cpu. The thresholds default to SAM's (pred_iou_thresh 0.88, as
    the rest of zsplg uses; SAM2AutomaticMaskGenerator's own default is 0.8).
    """
    spec = sam2_variant(variant)
    model, checkpoint_path = model_and_checkpoint(
        model, checkpoint, spec.weights, lambda path: load_sam2_checkpoint(variant, path))
    return Sam2MaskGenerator(
        model, variant=variant, checkpoint=checkpoint_path,
        device=torch.device(resolve_device(str(device))),
        points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
        precision=precision)

