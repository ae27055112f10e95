"""SAM's optional hole and island removal, without OpenCV.

segment-anything does this step with cv2, which zsplg does not depend on; scipy's
connected-component labelling gives the same components (8-connected, labelled in
raster order).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["postprocess_small_regions", "remove_small_regions"]


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


def postprocess_small_regions(masks: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                              stability: np.ndarray, points: np.ndarray, min_area: int,
                              nms_thresh: float) -> tuple[np.ndarray, ...]:
    """SamAutomaticMaskGenerator.postprocess_small_regions on binary masks, with the
    generator's per-mask records kept in step (public: the generator calls it when
    min_mask_region_area > 0)."""
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
