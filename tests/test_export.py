"""`zsplg export`: label folder -> COCO JSON (RLE) -> index PNGs, and colour overlays.

The label folders are built here from small hand-made index maps (with ignore
pixels, a nested key and two separate regions of one class) plus the run.json
fields export reads, so every expected mask, area and box is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from typer.testing import CliRunner

from zsplg.cli import app
from zsplg.data.classes import load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.labels import read_label, voc_colormap, write_label_png
from zsplg.export import ExportConfig, export_coco, export_index, export_overlays, run_export

# pycocotools' decode under numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ["background", "cat", "dog"]


def _labels() -> dict[str, np.ndarray]:
    a = np.zeros((20, 30), dtype=np.uint8)
    a[2:8, 3:10] = 1          # one cat
    a[12:18, 20:28] = 1       # a second, separate cat region
    a[10:14, 2:6] = 2         # a dog
    a[0, :] = 255             # ignore row
    b = np.full((16, 12), 2, dtype=np.uint8)
    b[:4, :4] = 0
    b[8:, 6:] = 255
    c = np.zeros((9, 7), dtype=np.uint8)  # background only
    return {"a": a, "sub/b": b, "c": c}


def _image(label: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)


def make_run(root: Path, classes_text: str = "\n".join(CLASSES) + "\n",
             suffix: str = ".txt") -> Path:
    """root/run (labels/, run.json as `zsplg label` writes it) and root/images."""
    classes = root / f"classes{suffix}"
    classes.write_text(classes_text)
    spec = load_class_spec(classes)
    run = root / "run"
    for i, (key, label) in enumerate(_labels().items()):
        write_label_png(run / "labels" / f"{key}.png", label)
        image = root / "images" / f"{key}{'.jpg' if key == 'sub/b' else '.png'}"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(label, i)).save(image, quality=95)
    (run / "run.json").write_text(json.dumps({
        "command": "label", "status": "finished",
        "inputs": {"images_dir": str(root / "images"), "pair_list": None,
                   "classes": spec.to_dict()}}))
    return run


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _assert_round_trip(run: Path, index_dir: Path) -> None:
    for key, label in _labels().items():
        back = Image.open(index_dir / f"{key}.png")
        assert back.mode == "P"
        np.testing.assert_array_equal(np.asarray(back), label, err_msg=key)


def test_coco_per_class_matches_the_labels_and_round_trips(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "coco.json"
    summary = export_coco(run, out)
    assert summary["failed"] == []
    coco = COCO(str(out))  # pycocotools' own reader accepts the file
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, "cat"), (2, "dog")]
    by_key = {img["key"]: img for img in coco.dataset["images"]}
    assert by_key["sub/b"]["file_name"] == "sub/b.jpg"  # the real image, relative to its folder
    assert (by_key["a"]["height"], by_key["a"]["width"]) == (20, 30)
    expected = 0
    for key, label in _labels().items():
        image = by_key[key]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        present = sorted(int(c) for c in np.unique(label) if c in (1, 2))
        assert sorted(a["category_id"] for a in anns) == present  # one per (image, class)
        expected += len(present)
        for ann in anns:
            want = label == ann["category_id"]
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), want)
            assert ann["area"] == int(want.sum())
            assert ann["bbox"] == _bbox(want)
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
    assert len(coco.dataset["annotations"]) == expected == summary["annotations"]
    assert "ignore_mask" not in by_key["c"]  # nothing ignored there

    summary = export_index(out, tmp_path / "index")
    assert summary == {"format": "index", "out": str(tmp_path / "index"), "images": 3,
                       "failed": []}
    _assert_round_trip(run, tmp_path / "index")


@pytest.mark.parametrize("options", [{"per_component": True}, {"include_background": True},
                                     {"per_component": True, "include_background": True}])
def test_coco_variants_round_trip_exactly(tmp_path, options):
    run = make_run(tmp_path)
    export_coco(run, tmp_path / "coco.json", **options)
    data = json.loads((tmp_path / "coco.json").read_text())
    cats = [c["id"] for c in data["categories"]]
    assert cats == ([0, 1, 2] if options.get("include_background") else [1, 2])
    a_id = next(i["id"] for i in data["images"] if i["key"] == "a")
    cat_anns = [x for x in data["annotations"] if x["image_id"] == a_id and x["category_id"] == 1]
    assert len(cat_anns) == (2 if options.get("per_component") else 1)  # two separate cats
    export_index(tmp_path / "coco.json", tmp_path / "index")
    _assert_round_trip(run, tmp_path / "index")


def test_spec_without_background_keeps_every_class_and_ignore(tmp_path):
    run = make_run(tmp_path, "classes: [sky, cat, dog]\nbackground: null\n", ".yaml")
    export_coco(run, tmp_path / "coco.json")
    data = json.loads((tmp_path / "coco.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["sky", "cat", "dog"]
    assert data["info"]["zsplg"]["background"] is None
    export_index(tmp_path / "coco.json", tmp_path / "index")
    _assert_round_trip(run, tmp_path / "index")


def test_index_from_a_foreign_coco_file_maps_categories_by_name(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncat\ndog\n")
    coco = {"images": [{"id": 5, "file_name": "x/photo.jpg", "height": 10, "width": 12}],
            "categories": [{"id": 17, "name": "Dog"}, {"id": 3, "name": "cat"}],
            "annotations": [
                {"id": 1, "image_id": 5, "category_id": 17, "iscrowd": 0,
                 "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},  # polygon
                {"id": 2, "image_id": 5, "category_id": 3, "iscrowd": 0,  # uncompressed RLE
                 "segmentation": {"size": [10, 12], "counts": [0, 2] + [8, 2] * 11 + [8]}}]}
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(coco))
    export_index(path, tmp_path / "index", classes=classes)
    label = read_label(tmp_path / "index" / "x" / "photo.png")
    expected = np.zeros((10, 12), dtype=np.uint8)
    # pycocotools rasterises the polygon; the dog region is its pixels.
    poly = mask_utils.decode(mask_utils.merge(
        mask_utils.frPyObjects([[2, 2, 8, 2, 8, 6, 2, 6]], 10, 12))).astype(bool)
    expected[poly] = 2
    expected[:2, :] = 1  # column-major counts [0, 2, 8, 2, ...]: the top two rows
    np.testing.assert_array_equal(label, expected)
    assert poly.sum() > 20


def test_index_refuses_unmappable_categories_and_bad_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": 300, "name": "x"}]}))
    with pytest.raises(InputError, match="category id 300"):
        export_index(path, tmp_path / "out")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncat\n")
    with pytest.raises(InputError, match="'x' .* not in the class spec"):
        export_index(path, tmp_path / "out", classes=classes)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"c\.json: invalid JSON"):
        export_index(path, tmp_path / "out")


def test_overlays_blend_palette_colours_and_skip_missing_images(tmp_path):
    run = make_run(tmp_path)
    (tmp_path / "images" / "c.png").unlink()
    summary = export_overlays(run, tmp_path / "ov", image_format="png", alpha=0.5)
    assert summary["images"] == 2
    assert [f["key"] for f in summary["failed"]] == ["c"]
    label = _labels()["a"]
    image = np.asarray(Image.open(tmp_path / "images" / "a.png"))
    out = np.asarray(Image.open(tmp_path / "ov" / "a.png"))
    assert out.shape == image.shape
    colours = voc_colormap().astype(np.float64)
    for y, x in [(3, 4), (11, 3), (0, 5), (19, 0)]:  # cat, dog, ignore, background
        want = np.rint(0.5 * image[y, x] + 0.5 * colours[label[y, x]])
        np.testing.assert_array_equal(out[y, x], want)
    jpg = export_overlays(run, tmp_path / "ovj", images=tmp_path / "images")
    assert (tmp_path / "ovj" / "sub" / "b.jpg").is_file() and jpg["images"] == 2
    Image.new("RGB", (31, 20)).save(tmp_path / "images" / "a.png")  # not a's image any more
    summary = export_overlays(run, tmp_path / "ov2")
    failed = {f["key"]: f["error"] for f in summary["failed"]}
    assert "image size 20x31 (HxW) does not match its label 20x30" in failed["a"]
    assert not (tmp_path / "ov2" / "a.jpg").exists()


def test_bad_label_is_reported_not_fatal(tmp_path):
    run = make_run(tmp_path)
    write_label_png(run / "labels" / "bad.png", np.full((4, 4), 7, dtype=np.uint8))
    summary = export_coco(run, tmp_path / "coco.json")
    assert summary["images"] == 3
    assert "label values out of range: 7" in summary["failed"][0]["error"]


def test_cli_export_round_trip_and_errors(tmp_path):
    run = make_run(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), "--to", "coco", "--out",
                                 str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(tmp_path / "c.json"), "--to", "index", "--out",
                                 str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    _assert_round_trip(run, tmp_path / "idx")
    result = runner.invoke(app, ["export", str(run), "--to", "yolo", "--out", "x"])
    assert result.exit_code == 2 and "--to must be one of" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--to", "coco",
                                 "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "label folder not found" in result.output


def test_export_config_refuses_what_the_command_refuses(tmp_path):
    with pytest.raises(ValueError, match="--to must be one of coco, overlay, index, got 'yolo'"):
        ExportConfig(source="s", to="yolo", out="o").validate()
    with pytest.raises(ValueError, match="give either --images DIR or --list PAIRS, not both"):
        ExportConfig(source="s", to="coco", out="o", images="i", pair_list="l").validate()
    with pytest.raises(ValueError, match="overlay format must be one of jpg, png"):
        ExportConfig(source="s", to="overlay", out="o", image_format="gif").validate()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        ExportConfig(source="s", to="overlay", out="o", alpha=2.0).validate()
    ExportConfig(source="s", to="coco", out="o", alpha=2.0).validate()  # alpha is overlay's


def test_run_export_does_what_to_says(tmp_path):
    run = make_run(tmp_path)
    coco = run_export(ExportConfig(source=str(run), to="coco", out=str(tmp_path / "c.json")))
    assert coco["format"] == "coco" and coco["images"] == 3
    index = run_export(ExportConfig(source=str(tmp_path / "c.json"), to="index",
                                    out=str(tmp_path / "idx")))
    assert index["format"] == "index"
    _assert_round_trip(run, tmp_path / "idx")
    overlays = run_export(ExportConfig(source=str(run), to="overlay", out=str(tmp_path / "ov"),
                                       image_format="png"))
    assert overlays["format"] == "overlay" and (tmp_path / "ov" / "a.png").is_file()
