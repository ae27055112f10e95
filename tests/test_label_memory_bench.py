"""benchmarks/label_memory.py's in-process random-model mode: the GPU suite runs it at full
size on a machine with no data and no weights, so its pieces are checked here on CPU:
the per-image trace and its summary, the hook into `zsplg label`'s own loop, the lazily
written synthetic photos, and the tied mask upscaling that keeps random masks smooth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import label_memory  # noqa: E402


def test_summary_reports_checkpoints_tenths_and_trend() -> None:
    trace = label_memory.MemoryTrace("cpu")
    # 100 images: RSS flat at 1000 MiB after a warm-up, then one MiB more per image
    for index in range(100):
        rss_mib = 900 + index if index < 20 else (1000 if index < 60 else 1000 + index - 59)
        trace.samples.append(label_memory.Sample(float(index + 1), rss_mib * 1024,
                                                 1200 * 1024, 0, 500 << 20, 0, 1000))
    summary = trace.summary()
    assert summary["images"] == 100 and summary["seconds_per_image"] == 1.0
    assert list(summary["mean_rss_mib_by_tenth"]) == [f"{k * 10 + 1}-{k * 10 + 10}"
                                                      for k in range(10)]
    assert summary["mean_rss_mib_by_tenth"]["41-50"] == 1000
    trend = summary["rss_mib_from_50"]
    assert (trend["at_50"], trend["at_last"], trend["change"]) == (1000, 1040, 40)
    assert trend["slope_per_100_images"] > 50  # the rise after image 60 shows
    # malloc's bytes in use stayed put: the kind of rise the allocator explains
    assert summary["malloc_in_use_mib_from_50"]["change"] == 0
    assert summary["images_per_second_after_10"] == 1.0


def test_sample_checkpoints_at_the_listed_counts_and_the_last(capsys) -> None:
    trace = label_memory.MemoryTrace("cpu")
    with trace.task("label", total=12) as task:
        for _ in range(12):
            task.advance()
    assert list(trace.at) == ["1", "10", "12"]
    assert trace.at["12"]["rss_mib"] > 0 and trace.at["12"]["hwm_mib"] >= trace.at["12"][
        "rss_mib"]
    assert trace.at["12"]["python_blocks"] > 0
    if label_memory._mallinfo2() is not None:  # glibc: malloc's own count is read too
        assert trace.at["12"]["malloc_in_use_mib"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["images"] for line in lines] == [1, 10, 12]
    assert all(json.loads(line)["partial"] for line in lines)


def test_synthetic_photos_are_written_block_by_block(tmp_path: Path) -> None:
    count = label_memory.IMAGE_BLOCK + 2
    paths = label_memory.write_synthetic(tmp_path, count, 48, seed=0, workers=0)
    assert len(paths) == count and all(p.is_file() for p in paths)
    from PIL import Image

    sizes = {Image.open(p).size for p in paths}
    assert all(max(size) == 48 for size in sizes) and len(sizes) > 1


def test_tied_upscaling_repeats_each_embedding_cell() -> None:
    from types import SimpleNamespace

    # SAM's output upscaling at a small width: two 2 x 2 stride-2 transposed convolutions
    upscaling = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 4, 2, 2), torch.nn.GELU(),
                                    torch.nn.ConvTranspose2d(4, 2, 2, 2), torch.nn.GELU())
    sam = SimpleNamespace(mask_decoder=SimpleNamespace(output_upscaling=upscaling))
    label_memory.smooth_mask_upscaling(sam)
    with torch.no_grad():
        out = upscaling(torch.randn(1, 8, 3, 5))
    # (1, 2, 12, 20): every 4 x 4 block holds one value per channel
    blocks = out.view(1, 2, 3, 4, 5, 4)
    torch.testing.assert_close(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))


class _OneMask:
    """A mask generator with SAM's surface the benchmark reads: one mask, the image's
    top half."""

    name = "stub-masks"
    precision = "fp32"

    def generate(self, image: np.ndarray):
        from zsplg.masks.base import MaskProposals

        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[: image.shape[0] // 2] = True
        return MaskProposals.from_masks(mask)

    def config(self) -> dict:
        return {"name": self.name}


class _Features:
    """A vision-language model whose features are constant (D = 4, 2 x 2 cells)."""

    name = "stub-vl"
    default_threshold = 0.2
    default_temperature = 0.1

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        return torch.ones(4, 2, 2)

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        rows = torch.arange(4 * len(prompts), dtype=torch.float32).view(-1, 4)
        return torch.nn.functional.normalize(rows.cos(), dim=-1)

    def class_probabilities(self, pooled, text, threshold, temperature) -> torch.Tensor:
        from zsplg.vl.base import thresholded_softmax

        similarity = torch.nn.functional.normalize(pooled, dim=-1) @ text.T
        return thresholded_softmax(similarity, threshold, temperature)

    def config(self) -> dict:
        return {"name": self.name}


def test_random_mode_runs_zsplg_labels_own_loop(tmp_path: Path, capsys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole mode with stub backends: PNGs written by run_label, one trace per image,
    and the last stdout line is the full result."""
    from zsplg.labeling.labeller import Labeller

    def stub_labeller(args, spec, device):
        return Labeller(spec, label_memory.CountingMasks(_OneMask()), _Features())

    monkeypatch.setattr(label_memory, "build_random_labeller", stub_labeller)
    trace_file = tmp_path / "trace.jsonl"
    assert label_memory.main(["--models", "random", "--synthetic", "3", "--long-side", "40",
                              "--device", "cpu", "--image-workers", "0",
                              "--trace", str(trace_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "partial" not in result and json.loads(lines[0])["partial"] is True
    assert result["images"] == 3 and result["label_pngs"] == 3 and result["failed"] == 0
    assert list(result["at_images"]) == ["1", "3"]
    assert result["masks_per_image"] == {"mean": 1.0, "min": 1, "max": 1}
    settings = result["settings"]
    assert settings["pred_iou_thresh"] == 0.0 and settings["stability_score_thresh"] == 0.0
    assert "0.88" in settings["threshold_note"]
    assert len(trace_file.read_text().splitlines()) == 3


def test_random_mode_refuses_two_image_sources(tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("a.jpg\n")
    with pytest.raises(SystemExit):
        label_memory.main(["--models", "random", "--synthetic", "2", "--list", str(listing)])
