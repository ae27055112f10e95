"""Training datasets and augmentations: reproducibility, padding, alignment, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zsplg.data.errors import InputError
from zsplg.data.labels import write_confidence_png, write_label_png
from zsplg.data.sources import Sample
from zsplg.train.augment import IMAGENET_MEAN, IMAGENET_STD, cutmix_box, strong_augment
from zsplg.train.datasets import LabelledDataset, UnlabelledDataset, ValDataset

CROP = 48
HEIGHT, WIDTH = 60, 64


def position_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Colours that encode positions: red = 4 x, green = 4 y (a linear ramp survives
    bilinear resampling, so a pixel's colour says where in the source it came from)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([4 * xs, 4 * ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def cell_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The label of source position (x, y): 8x8 cells, numbered row by row."""
    return (y // 8) * 8 + (x // 8)


def position_label(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return cell_of(xs, ys).astype(np.uint8)


def denormalise(image: torch.Tensor) -> np.ndarray:
    arr = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.rint(arr * 255.0)


def label_from_colours(image: torch.Tensor, tolerance: float = 0.0) -> np.ndarray:
    """The cells under the pixels' source positions, shape (..., H, W).

    A bilinear pixel's colour gives its source position up to the 8-bit steps, and
    its nearest-neighbour label may lie on either side of an exact half-pixel tie:
    with a tolerance, every cell within that distance is a candidate (first axis).
    """
    rgb = denormalise(image)
    x, y = rgb[..., 0] / 4, rgb[..., 1] / 4
    if not tolerance:
        return cell_of(np.rint(x).astype(int), np.rint(y).astype(int))
    shifts = (-tolerance, tolerance)
    return np.stack([cell_of(np.rint(x + dx).astype(int), np.rint(y + dy).astype(int))
                     for dx in shifts for dy in shifts])


@pytest.fixture
def samples(tmp_path):
    """Three position-coded images with their labels, and the pseudo-label folder."""
    out = []
    for i in range(3):
        image = tmp_path / "images" / f"im{i}.png"
        image.parent.mkdir(exist_ok=True)
        Image.fromarray(position_image()).save(image)
        label = tmp_path / "labels" / f"im{i}.png"
        write_label_png(label, position_label())
        out.append(Sample(image=image, label=label, key=f"images/im{i}"))
    pseudo_dir = tmp_path / "pseudo"
    for sample in out[:2]:  # the third has no pseudo label
        write_label_png(pseudo_dir / f"{sample.key}.png", position_label())
    return out, pseudo_dir


def items_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_labelled_items_depend_only_on_seed_epoch_and_index(samples):
    pairs, _ = samples
    first = LabelledDataset(pairs, CROP, seed=3)
    second = LabelledDataset(pairs, CROP, seed=3)
    first.set_epoch(5)
    second.set_epoch(5)
    forward = [first[i] for i in range(3)]
    backward = [second[i] for i in reversed(range(3))][::-1]  # other order, other object
    assert all(items_equal(a, b) for a, b in zip(forward, backward, strict=True))
    image, mask = forward[0]
    assert image.dtype == torch.float32 and image.shape == (3, CROP, CROP)
    assert mask.dtype == torch.int64 and mask.shape == (CROP, CROP)
    second.set_epoch(6)
    assert not torch.equal(second[0][0], forward[0][0])
    assert not torch.equal(LabelledDataset(pairs, CROP, seed=4).__getitem__(0)[0], image)


def test_unlabelled_items_are_reproducible_across_loader_workers(samples):
    pairs, pseudo_dir = samples
    dataset = UnlabelledDataset(pairs, CROP, pseudo_label_dir=pseudo_dir, seed=1)
    dataset.set_epoch(2)
    direct = [dataset[i] for i in range(3)]
    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2, shuffle=False))
    assert all(items_equal(a, b) for a, b in zip(direct, loaded, strict=True))
    dataset.set_epoch(3)
    assert not torch.equal(dataset[0]["img_w"], direct[0]["img_w"])


def test_mask_and_pseudo_label_stay_aligned_with_the_image(samples):
    pairs, pseudo_dir = samples
    labelled = LabelledDataset(pairs, CROP, seed=0)
    unlabelled = UnlabelledDataset(pairs[:2], CROP, pseudo_label_dir=pseudo_dir, seed=0)
    flips = 0
    for epoch in range(4):
        labelled.set_epoch(epoch)
        unlabelled.set_epoch(epoch)
        for index in range(2):
            for image, target in (labelled[index], (unlabelled[index]["img_w"],
                                                    unlabelled[index]["pseudo"])):
                target = target.numpy()
                valid = target != 255
                assert valid.mean() > 0.2
                candidates = label_from_colours(image, tolerance=0.3)
                agree = (candidates == target).any(0)[valid].mean()
                # Only pixels at the image border (where resampling filters are cut off)
                # may disagree; a geometric mismatch (a flip or a shift applied to only
                # one of them) breaks most of the pixels.
                assert agree > 0.97, (epoch, index, agree)
                assert (candidates == target[:, ::-1]).any(0)[valid].mean() < 0.7
                red = denormalise(image)[..., 0][valid]
                flips += int(red[0] > red[-1])  # x decreasing along the first valid row
    assert flips > 0  # some crops were flipped, so flipping was checked too


def test_padding_is_ignored_everywhere(samples):
    pairs, pseudo_dir = samples
    crop = 96  # larger than any 1x rescale of the 60x64 image: padding guaranteed
    labelled = LabelledDataset(pairs, crop, scale_range=(1.0, 1.0), seed=0)
    unlabelled = UnlabelledDataset(pairs, crop, pseudo_label_dir=pseudo_dir,
                                   scale_range=(1.0, 1.0), seed=0)
    image, mask = labelled[0]
    item = unlabelled[0]
    black = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD).view(3, 1, 1)
    for img, target in ((image, mask), (item["img_w"], item["pseudo"])):
        padding = target == 255
        assert padding.float().mean() == pytest.approx(1 - HEIGHT * WIDTH / crop**2)
        rows = padding.all(dim=1)
        assert rows[HEIGHT:].all() and not rows[:HEIGHT].any()  # padded at the bottom
        torch.testing.assert_close(img[:, padding], black.view(3, 1).expand(3, int(padding.sum())))
    ignore = item["ignore_mask"]
    assert set(ignore.unique().tolist()) == {0, 255}
    assert torch.equal(ignore == 255, item["pseudo"] == 255)


def test_unlabelled_item_layout_and_strong_views(samples):
    pairs, pseudo_dir = samples
    dataset = UnlabelledDataset(pairs, CROP, pseudo_label_dir=pseudo_dir, seed=0)
    item = dataset[0]
    assert set(item) == {"img_w", "img_s1", "img_s2", "ignore_mask", "cutmix_box1",
                         "cutmix_box2", "pseudo", "pseudo_weight"}
    # without a reliability table every pseudo-labelled pixel counts fully
    assert item["pseudo_weight"].dtype == torch.float32
    assert torch.equal(item["pseudo_weight"], torch.ones(CROP, CROP))
    for key in ("img_w", "img_s1", "img_s2"):
        assert item[key].shape == (3, CROP, CROP) and item[key].dtype == torch.float32
    for key in ("ignore_mask", "cutmix_box1", "cutmix_box2", "pseudo"):
        assert item[key].shape == (CROP, CROP) and item[key].dtype == torch.int64
    changed = 0
    for epoch in range(5):
        dataset.set_epoch(epoch)
        item = dataset[1]
        assert set(item["cutmix_box1"].unique().tolist()) <= {0, 1}
        changed += int(not torch.equal(item["img_s1"], item["img_w"]))
        changed += int(not torch.equal(item["img_s1"], item["img_s2"]))
    assert changed >= 8  # p(no strong change) = 0.2 * 0.8 * 0.5 per view


def test_missing_pseudo_labels_are_all_ignored(samples):
    pairs, pseudo_dir = samples
    image_only = [Sample(image=s.image, label=None, key=s.key) for s in pairs]
    with_dir = UnlabelledDataset(image_only, CROP, pseudo_label_dir=pseudo_dir)
    assert (with_dir[2]["pseudo"] == 255).all()  # no file for this key
    assert (with_dir[0]["pseudo"] != 255).any()
    assert (UnlabelledDataset(image_only, CROP)[0]["pseudo"] == 255).all()


def test_min_confidence_leaves_unsure_pseudo_pixels_to_the_teacher(tmp_path):
    """A `zsplg label` folder: labels/ and confidence/; unsure pixels become ignore."""
    image = tmp_path / "im.png"
    Image.fromarray(position_image()).save(image)
    run = tmp_path / "run"
    write_label_png(run / "labels" / "im.png", position_label())
    confidence = np.where(np.arange(WIDTH)[None, :] < WIDTH // 2, 0.9, 0.3)
    write_confidence_png(run / "confidence" / "im.png",
                         np.broadcast_to(confidence, (HEIGHT, WIDTH)).astype(np.float32))
    sample = [Sample(image=image, label=None, key="im")]
    kept = UnlabelledDataset(sample, CROP, pseudo_label_dir=run / "labels", seed=0)
    sure = UnlabelledDataset(sample, CROP, pseudo_label_dir=run / "labels", seed=0,
                             min_confidence=0.5)
    a, b = kept[0], sure[0]
    assert torch.equal(a["img_w"], b["img_w"])  # the same crop: only the target differs
    # the kept label where the crop shows the sure (left) half, ignore on the right half
    colour_x = denormalise(a["img_w"])[..., 0] / 4
    left = (colour_x < WIDTH // 2 - 1) & (a["ignore_mask"] != 255).numpy()
    right = (colour_x > WIDTH // 2) & (a["ignore_mask"] != 255).numpy()
    assert left.any() and right.any()
    assert torch.equal(b["pseudo"][torch.from_numpy(left)], a["pseudo"][torch.from_numpy(left)])
    assert (b["pseudo"][torch.from_numpy(right)] == 255).all()
    (run / "confidence" / "im.png").unlink()
    (run / "confidence").rmdir()
    with pytest.raises(InputError, match="confidence"):
        UnlabelledDataset(sample, CROP, pseudo_label_dir=run / "labels", min_confidence=0.5)


def test_cutmix_box_statistics():
    size = 64
    boxes = [cutmix_box(size, np.random.default_rng(s)) for s in range(300)]
    used = [b for b in boxes if b.any()]
    assert 0.38 < len(used) / len(boxes) < 0.62
    for box in used:
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        h, w = len(rows), len(cols)
        assert box.sum() == h * w  # one solid rectangle
        assert box.sum() <= 0.4 * size * size
        assert 0.2 <= h / w <= 5.0
    assert np.array_equal(cutmix_box(size, np.random.default_rng(7)),
                          cutmix_box(size, np.random.default_rng(7)))


def test_strong_augment_is_a_function_of_its_generator():
    image = Image.fromarray(position_image())
    a = np.asarray(strong_augment(image, np.random.default_rng(11)))
    b = np.asarray(strong_augment(image, np.random.default_rng(11)))
    assert np.array_equal(a, b)
    differs = [not np.array_equal(np.asarray(strong_augment(image, np.random.default_rng(s))), a)
               for s in range(12, 18)]
    assert any(differs)


def test_label_values_out_of_range_name_the_file(samples, tmp_path):
    pairs, _ = samples
    bad = tmp_path / "bad.png"
    label = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    label[0, 0] = 40
    label[0, 1] = 255  # ignore is fine
    write_label_png(bad, label)
    dataset = LabelledDataset([Sample(pairs[0].image, bad, "bad")], CROP, num_classes=40)
    with pytest.raises(InputError, match=r"bad\.png.*40"):
        dataset[0]
    assert LabelledDataset([Sample(pairs[0].image, bad, "b")], CROP, num_classes=41)[0]


def test_size_mismatch_names_image_and_label(samples, tmp_path):
    pairs, pseudo_dir = samples
    small = tmp_path / "small.png"
    write_label_png(small, np.zeros((HEIGHT, WIDTH - 1), dtype=np.uint8))
    with pytest.raises(InputError, match=r"small\.png.*im0\.png"):
        LabelledDataset([Sample(pairs[0].image, small, "x")], CROP)[0]
    write_label_png(pseudo_dir / "images" / "im2.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(InputError, match=r"pseudo/images/im2\.png.*im2\.png"):
        UnlabelledDataset(pairs, CROP, pseudo_label_dir=pseudo_dir)[2]


def test_labelled_and_val_sets_need_labels(samples):
    pairs, _ = samples
    image_only = [Sample(image=pairs[0].image, label=None, key="a")]
    with pytest.raises(InputError, match="im0.png.*no label"):
        LabelledDataset(image_only, CROP)
    with pytest.raises(InputError, match="no label"):
        ValDataset(image_only)


def test_val_items_are_whole_images(samples):
    pairs, _ = samples
    image, mask, key = ValDataset(pairs)[1]
    assert image.shape == (3, HEIGHT, WIDTH) and mask.shape == (HEIGHT, WIDTH)
    assert key == "images/im1"
    assert np.array_equal(mask.numpy(), position_label())
    assert np.array_equal(label_from_colours(image), position_label())
