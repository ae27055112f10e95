"""SAM 2.1 everything-mode masks: the fast tier, on Meta's `sam2` package.

Why SAM 2.1 and not MobileSAM: the PyPI package `sam2` 1.1.0 (Dec 2024, among PyPI's
15,000 most downloaded) carries Meta's SAM 2.1 code as released in facebookresearch/sam2
(Meta's copyright headers, configs and setup.py; only the package metadata names the
third party who uploaded it, as Meta publishes no wheel), the checkpoints are Meta's, and
models are built from the package's own hydra configs. MobileSAM reaches PyPI only as
unofficial mirrors (`mobilesam-mirror`, `mobilesam-lite`), not from its authors.

The model is built with `build_sam2` from the package's configs
(configs/sam2.1/sam2.1_hiera_{t,s}.yaml) and the image is embedded by
`SAM2ImagePredictor.set_image`, so preprocessing and features are the library's own. The
everything mode then runs the pipeline of `zsplg.masks.sam` (this generator subclasses
it): every grid point decoded in large batches (through zsplg.masks.sam2_decoder, which
equals the library's decoder up to float rounding and is much cheaper on the CPU; any
other decoder is called as it is), the predicted-IoU filter on the decoder's
scores, the stability filter and boxes computed exactly from the LOW-RESOLUTION logits
(the full-resolution map is one bilinear resize here, which that module's exact
arithmetic covers as a special case), NMS, and only the survivors upsampled. The output
equals `SAM2AutomaticMaskGenerator`'s (one crop layer, `use_m2m=False`, binary masks):
the same masks, predicted IoUs, stability scores and boxes, in its order (exactly, given
the same decoder outputs; tests/test_sam2_generator.py checks both).

What differs from SAM (v1): SAM 2 resizes the image to its square input (1024 px for the
official models), so there is no `long_side` setting; the mask binarisation threshold is
the predictor's 0.0 (`SAM2AutomaticMaskGenerator`'s default); the reference's
`min_mask_region_area` is a low-resolution hole and sprinkle fill that needs sam2's CUDA
extension (skipped with a warning without it), so it is not offered here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional

from zsplg.masks.sam import (
    SamCheckpointError,
    SamMaskGenerator,
    _axis,
    _chunks,
    _Geometry,
    resolve_device,
    state_dict_problems,
)

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

__all__ = ["SAM2_VARIANTS", "Sam2CheckpointError", "Sam2MaskGenerator", "build_sam2_generator",
           "build_sam2_model", "load_sam2_checkpoint"]


@dataclass(frozen=True)
class Sam2Variant:
    """A SAM 2.1 model size: its hydra config in the sam2 package and its weights entry
    in zsplg.runtime.weights."""

    config: str
    weights: str
    label: str


SAM2_VARIANTS = {
    "tiny": Sam2Variant("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1-hiera-tiny",
                        "SAM 2.1 Hiera-Tiny"),
    "small": Sam2Variant("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1-hiera-small",
                         "SAM 2.1 Hiera-Small"),
}
# other checkpoints' Hiera block counts, for the "looks like" hint
_BLOCKS_TO_NAME = {12: "SAM 2.1 Hiera-Tiny", 16: "SAM 2.1 Hiera-Small",
                   24: "SAM 2.1 Hiera-Base+", 48: "SAM 2.1 Hiera-Large"}
_BLOCK_KEY = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")


class Sam2CheckpointError(SamCheckpointError):
    """A SAM 2.1 checkpoint file cannot be read or does not fit the requested model.

    A SamCheckpointError, so callers that report those (the CLI) report these too."""


def _sam2_modules() -> Any:
    try:
        import sam2.build_sam as build_sam
    except ImportError as error:  # pragma: no cover - sam2 is installed with zsplg
        raise ImportError("SAM 2.1 masks need Meta's sam2 package: "
                          "SAM2_BUILD_CUDA=0 pip install sam2==1.1.0") from error
    return build_sam


def _check_variant(variant: str) -> Sam2Variant:
    if variant not in SAM2_VARIANTS:
        raise ValueError(f"unknown SAM 2.1 variant {variant!r}; choose from "
                         f"{', '.join(SAM2_VARIANTS)}")
    return SAM2_VARIANTS[variant]


def build_sam2_model(variant: str = "tiny", hydra_overrides: list[str] | None = None,
                     ) -> SAM2Base:
    """A randomly initialised SAM 2.1 `variant` on the cpu, built by sam2's own
    `build_sam2` from its hydra config (`hydra_overrides`: extra hydra overrides)."""
    spec = _check_variant(variant)
    build_sam = _sam2_modules()
    return build_sam.build_sam2(spec.config, ckpt_path=None, device="cpu", mode="eval",
                                hydra_overrides_extra=list(hydra_overrides or []))


def _looks_like(state: dict) -> str:
    """A guess at what a state dict is, for error messages ("" when unsure)."""
    if "image_encoder.patch_embed.proj.weight" in state and not any(
            key.startswith("image_encoder.trunk.") for key in state):
        return "; it looks like a SAM (v1) checkpoint: use --masks sam"
    blocks = {int(match.group(1)) for key in state if (match := _BLOCK_KEY.match(key))}
    if not blocks:
        return ""
    name = _BLOCKS_TO_NAME.get(max(blocks) + 1)
    if name is None:
        return ""
    version = "" if "no_obj_embed_spatial" in state else " (SAM 2.0: no SAM 2.1 keys)"
    return f"; it looks like a {name} checkpoint{version}"


def load_sam2_checkpoint(variant: str, checkpoint: str | Path) -> SAM2Base:
    """Build SAM 2.1 `variant` and load `checkpoint` into it with strict key and shape checks.

    The official files hold {"model": state_dict}; a bare state dict is accepted too.
    Raises Sam2CheckpointError naming the file when it cannot be read or does not fit
    (missing, unexpected or wrongly shaped tensors; a likely other model is suggested).
    """
    spec = _check_variant(variant)
    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (zip, pickle, EOF, OS)
        raise Sam2CheckpointError(path, f"cannot be read as a torch checkpoint ({error})"
                                  ) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the official layout
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Sam2CheckpointError(path, "is not a state dict of tensors")

    # Hiera cannot be built on the meta device (it calls .item()), so the model is built
    # once, its state dict gives the expected keys and shapes, and the checkpoint fills it
    model = build_sam2_model(variant)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = state_dict_problems(expected, state)
    if problems:
        hint = _looks_like(state)
        if spec.label in hint and "SAM 2.0" not in hint:
            hint = ""
        raise Sam2CheckpointError(
            path, f"is not a {spec.label} checkpoint: {'; '.join(problems)}{hint}")

    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # pragma: no cover - the checks above catch mismatches
        raise Sam2CheckpointError(path, f"does not load into {spec.label}: {error}") from error
    return model.eval()


# --------------------------------------------------------------------------- generator


class Sam2MaskGenerator(SamMaskGenerator):
    """SAM 2.1 everything mode; build it with `build_sam2_generator`."""

    name = "sam2"

    def __init__(self, model: SAM2Base, *, variant: str, checkpoint: Path | None,
                 device: torch.device, points_per_side: int, points_per_batch: int | None,
                 pred_iou_thresh: float, stability_score_thresh: float,
                 stability_score_offset: float, box_nms_thresh: float) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        # the shared pipeline binarises at model.mask_threshold, which SAM's model class
        # carries and SAM2Base does not: SAM 2's predictor and generator use 0.0 as well
        if not hasattr(model, "mask_threshold"):
            model.mask_threshold = 0.0
        self._setup(model, variant, checkpoint, device, points_per_side, points_per_batch,
                    pred_iou_thresh, stability_score_thresh, stability_score_offset,
                    box_nms_thresh)
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
        from zsplg.masks.sam2_decoder import decode_sam2_point_prompts

        prompt_encoder = self.model.sam_prompt_encoder
        decoder = self.model.sam_mask_decoder
        image_embed = features["image_embed"]
        high_res = list(features["high_res_feats"])
        low_res, iou = [], []
        with self._autocast():
            dense_pe = prompt_encoder.get_dense_pe()
            for part in _chunks(int(in_points.shape[0]), batch):
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

    def _geometry(self, low_res_size: torch.Size, input_size: tuple[int, int],
                  image_size: tuple[int, int]) -> _Geometry:
        """SAM2Transforms.postprocess_masks is ONE bilinear resize, low-res -> image: the
        SAM pipeline's two resizes with an identity first one (lr -> lr, exact)."""
        shapes = [(int(low_res_size[axis]), int(low_res_size[axis]), int(low_res_size[axis]),
                   image_size[axis]) for axis in (0, 1)]
        key = tuple(shapes)
        if key not in self._geometries:
            rows, cols = (_axis(*shape, self.device) for shape in shapes)
            k = max(rows.support, cols.support)
            if rows.support != cols.support:
                rows, cols = (_axis(*shape, self.device, support=k) for shape in shapes)
            if len(self._geometries) >= 8:
                self._geometries.clear()
            self._geometries[key] = _Geometry(rows=rows, cols=cols, height=image_size[0],
                                              width=image_size[1], support=k)
        return self._geometries[key]

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
                         ) -> Sam2MaskGenerator:
    """SAM 2.1 everything-mode generator (masks equal to SAM2AutomaticMaskGenerator's).

    variant: "tiny" or "small". checkpoint: the weights file (official layout,
    {"model": state_dict}); None -> the file `zsplg weights fetch sam2.1-hiera-tiny` (or
    -small) stores (WeightsMissingError when absent). model: an already-built sam2
    `SAM2Base` (then checkpoint, if given, only names the file it came from in config()).
    device: "auto" (cuda, else cpu) or any torch device; on cuda the model runs under
    bf16 (fp16 where bf16 is unsupported) autocast, as SAM 2's own examples do.
    points_per_batch: prompts per decoder call; None -> all at once on cuda (halved on
    out-of-memory), 64 on cpu. The thresholds default to SAM's (pred_iou_thresh 0.88, as
    the rest of zsplg uses; SAM2AutomaticMaskGenerator's own default is 0.8).
    """
    spec = _check_variant(variant)
    checkpoint_path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if model is None:
        from zsplg.runtime.weights import resolve_weights

        checkpoint_path = resolve_weights(spec.weights, checkpoint,
                                          option_hint="--sam-checkpoint PATH")
        model = load_sam2_checkpoint(variant, checkpoint_path)
    elif checkpoint_path is not None and not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint file")
    return Sam2MaskGenerator(
        model, variant=variant, checkpoint=checkpoint_path, device=resolve_device(device),
        points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh)

