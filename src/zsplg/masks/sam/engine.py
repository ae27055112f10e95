"""Full-resolution threshold statistics of SAM's mask logits, computed at low resolution.

The everything mode decides which candidates to keep (stability score) and where
their boxes lie (for NMS) from the full-resolution logits, which the reference makes
by upsampling every candidate's low-resolution logits to the image. This module gets
the same counts and boxes without upsampling. The upsampling is a separable linear
map, whose weights are read off by resizing identity matrices with the very
`F.interpolate` calls the model makes; each full-resolution pixel is then a convex
combination of a K x K (K <= 3) low-res window. Where a window lies wholly above or
below a threshold its pixels are decided without being computed; only the pixels of
windows that straddle it (a thin band along the contour) are evaluated, from the same
weights.

A pixel within float32 rounding of the threshold (RELATIVE_TOLERANCE of the window's
largest |logit|) cannot be decided this way: statistics count such pixels as
undecided, and the caller sends a candidate whose decision or box hinges on one to the
full-resolution path. So, given the same logits, every decision and box is the one
full-resolution filtering would give.

SAM (v1) upsamples in two bilinear resizes (to the encoder's square input, crop, then
to the image); SAM 2.1 in one, which is the same map with an identity first resize.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

__all__ = ["RELATIVE_TOLERANCE", "Geometry", "LowResLogits", "ThresholdStats",
           "build_geometry", "chunks", "stability_decision"]

# undecidable: |value - threshold| <= this x the largest |logit| the pixel is interpolated
# from; it leaves a margin above the float32 rounding of the resizes and of our evaluation
RELATIVE_TOLERANCE = 1e-5


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
class Geometry:
    """The low-res -> full-resolution map of one input and image size, both axes.

    Public because the generators build one per image size (build_geometry) and cache
    it, then hand it to every LowResLogits of that image."""

    rows: _Axis
    cols: _Axis
    height: int
    width: int
    support: int  # K, the same for both axes (the larger of the two)

    @property
    def occupied(self) -> torch.Tensor:
        """(lr_h, lr_w) bool: cells that hold full-resolution pixels."""
        return (self.rows.count > 0)[:, None] & (self.cols.count > 0)[None, :]


def build_geometry(shapes: Sequence[tuple[int, int, int, int]], device: torch.device,
                   height: int, width: int) -> Geometry:
    """The map for rows and columns, each given as (low-res length, resize length, kept
    length, output length): the first resize goes low-res -> resize length, its first
    `kept` pixels are kept, the second resize goes -> output length. SAM 2.1's single
    resize is (lr, lr, lr, out). Both axes share one window size K, so the narrower
    axis' weights are padded to the wider one's."""
    rows, cols = (_axis(*shape, device) for shape in shapes)
    k = max(rows.support, cols.support)
    if rows.support != cols.support:
        rows, cols = (_axis(*shape, device, support=k) for shape in shapes)
    return Geometry(rows=rows, cols=cols, height=height, width=width, support=k)


@dataclass
class ThresholdStats:
    """Per candidate, for one threshold t: pixels surely > t, pixels too close to t to
    decide, and (when asked) the box of the sure pixels and whether an undecided pixel
    lies outside it. The undecided counts tell the generator which candidates need the
    full-resolution path."""

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


class LowResLogits:
    """Full-resolution threshold statistics of a chunk of low-res logits (n, h, w).

    The generators' stability filter and NMS boxes run on these instead of on
    upsampled logits; what rounding cannot decide is reported as undecided."""

    def __init__(self, logits: torch.Tensor, geometry: Geometry,
                 extremes: tuple[torch.Tensor, torch.Tensor] | None = None,
                 tol: torch.Tensor | None = None,
                 tolerance: float = RELATIVE_TOLERANCE) -> None:
        k = geometry.support
        self.x = logits
        self.geometry = geometry
        self.window_max, self.window_min = extremes or _window_extremes(logits, k)
        if tol is None:  # rounding scales with the magnitudes a pixel is interpolated from
            tol = tolerance * torch.maximum(self.window_max.abs(), self.window_min.abs())
        self.tol = tol  # (n, h, w): per cell
        self.windows = functional.pad(logits, (0, k - 1, 0, k - 1)).unfold(1, k, 1).unfold(2, k, 1)

    def select(self, index: torch.Tensor) -> LowResLogits:
        return LowResLogits(self.x[index], self.geometry,
                       (self.window_max[index], self.window_min[index]), self.tol[index])

    def box(self, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 4) boxes of the pixels > threshold and whether each is uncertain."""
        result = self.stats(threshold, with_box=True)
        if result.box is None or result.box_unsure is None:  # pragma: no cover
            raise RuntimeError("box statistics missing")
        return result.box, result.box_unsure

    def stats(self, threshold: float, with_box: bool = False) -> ThresholdStats:
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
        result = ThresholdStats(above=above, undecided=undecided)
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


def chunks(total: int, size: int) -> Iterator[slice]:
    """Slices of at most `size` over range(total): the generators bound their memory by
    walking candidates and prompts in such steps."""
    for begin in range(0, total, size):
        yield slice(begin, min(total, begin + size))


def stability_decision(high: ThresholdStats, low: ThresholdStats,
                        thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """keep and unsure flags for `stability >= thresh`, stability = #(>t+o) / #(>t-o) in
    float32 like segment-anything's calculate_stability_score. Undecided pixels can make
    the decision unsure; the generator recomputes those candidates at full resolution."""
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
