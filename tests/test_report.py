"""`zsplg report` in a real headless Chromium: one page per run kind (label, eval, train).

The runs are made here: a label run by the real `run_label` with a stand-in
labeller (red pixels are "cat", green "dog", blue "ignore"), an eval run by
zsplg's own evaluate functions on those labels, and a train run from
synthetic history lines. Each report is opened in Chromium with a probe script
injected into its head that records console errors, failed loads and CSP
violations and writes every chart's and gallery item's size into the DOM
(read back with --dump-dom); a second launch takes a screenshot, and the
chart and gallery regions of it must not be blank.

Without a chromium binary the browser tests skip, except under CI (env CI
set), where .ci/run installs Debian's chromium and a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from zsplg.data.errors import InputError
from zsplg.data.labels import write_label_png
from zsplg.data.sources import read_pair_list
from zsplg.evaluate import evaluate_folder, write_eval_outputs
from zsplg.labeling.run import LabelConfig, Labeller, run_label
from zsplg.metrics import ConfusionMatrix, compute_metrics
from zsplg.report import ReportOptions, render_report, write_report
from zsplg.report.gallery import ImageScore, pick, rank

CLASSES = ["background", "cat", "dog"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280


# --------------------------------------------------------------------------- the runs


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def config(self) -> dict:
        return {"name": self.name}


class ColourLabeller(Labeller):
    """Stands in for the models: red -> cat, green -> dog, blue -> ignore, else background.

    Only label_array (and describe) are replaced; reading files, sizes and the run
    loop are zsplg's own.
    """

    def __init__(self) -> None:  # no models to build: Labeller.__init__ is not called
        self.max_side = 1024
        self.mask_generator = _Named("colour-masks")
        self.vl_model = _Named("colour-names")

    def label_array(self, image: np.ndarray) -> SimpleNamespace:
        confidence = np.full(image.shape[:2], image.mean() / 255.0, dtype=np.float32)
        return SimpleNamespace(label=_predicted(image), confidence=confidence)

    def describe(self) -> dict:
        return {"masks": self.mask_generator.config(), "vl": self.vl_model.config()}


def _photo(seed: int) -> np.ndarray:
    """48x64 dark noise with a red square, a green bar and a small blue patch."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
    image[8 + seed:28 + seed, 10:30] = (220, 30, 30)
    image[30:40, 36:60] = (30, 220, 30)
    image[2:6, 2:6] = (20, 20, 240)
    return image


def _predicted(image: np.ndarray) -> np.ndarray:
    label = np.zeros(image.shape[:2], dtype=np.uint8)
    label[image[..., 0] > 128] = 1
    label[image[..., 1] > 128] = 2
    label[image[..., 2] > 128] = 255
    return label


# key -> how its ground truth differs from the prediction; "nogt" has none.
GT_KINDS = {"good": "same", "mid": "dog-as-background", "bad": "swapped"}


def _ground_truth(pred: np.ndarray, kind: str) -> np.ndarray:
    gt = pred.copy()
    gt[gt == 255] = 0
    if kind == "dog-as-background":
        gt[pred == 2] = 0
    elif kind == "swapped":
        gt[pred == 1], gt[pred == 2] = 2, 1
    return gt


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "images").mkdir()
    lines = []
    for seed, key in enumerate(["good", "mid", "bad", "nogt"]):
        image = _photo(seed)
        Image.fromarray(image).save(root / "images" / f"{key}.png")
        line = f"images/{key}.png"
        if key in GT_KINDS:
            write_label_png(root / "gt" / f"{key}.png",
                            _ground_truth(_predicted(image), GT_KINDS[key]))
            line += f" gt/{key}.png"
        lines.append(line)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")

    label_run = root / "label-run"
    run_label(LabelConfig(classes=str(root / "classes.txt"), out=str(label_run),
                          pair_list=str(root / "pairs.txt")),
              labeller=ColourLabeller())

    eval_run = root / "eval-run"
    samples = read_pair_list(root / "pairs.txt")
    metrics, cm, errors = evaluate_folder(label_run / "labels", samples, CLASSES)
    metrics["errors"] = errors
    write_eval_outputs(eval_run / "eval.json", metrics, cm, CLASSES)

    train_run = root / "train-run"
    train_run.mkdir()
    (train_run / "config.yaml").write_text("model: deeplabv3plus\nlr: 0.01\niters: 300\n")
    history = []
    for it in range(10, 310, 10):
        history.append({"iter": it, "epoch": it // 100, "lr": 0.01 * (1 - it / 310) ** 0.9,
                        "loss": 2.0 / (1 + it / 50), "loss_x": 1.2 / (1 + it / 50),
                        "loss_u": 0.8 / (1 + it / 60), "mask_ratio": min(1.0, it / 200)})
        if it % 100 == 0:
            val_cm = ConfusionMatrix(3)
            pred = np.array([[0, 1, 1, 2]] * 4, dtype=np.uint8)
            gt = pred.copy()
            gt[: 4 - it // 100, 3] = 1  # fewer mistakes each validation
            val_cm.update(pred, gt)
            history.append({"iter": it, "val": compute_metrics(val_cm, CLASSES)})
    text = "\n".join(json.dumps(h) for h in history) + "\n{truncated line\n"
    (train_run / "history.jsonl").write_text(text)
    final = [h for h in history if "val" in h][-1]["val"]
    (train_run / "metrics.json").write_text(json.dumps(final))
    return {"root": root, "label": label_run, "eval": eval_run, "train": train_run,
            "metrics": metrics}


# --------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """ZSPLG_CHROMIUM, else the first Chromium/Chrome on PATH."""
    explicit = os.environ.get("ZSPLG_CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium binary was found: .ci/run must install "
                        "Debian's chromium (apt-get install chromium)")
        pytest.skip("no chromium binary found (apt-get install chromium, or set "
                    "ZSPLG_CHROMIUM): the HTML report is not browser-tested")
    return path


SELECTORS = ("svg.chart-bars", "svg.chart-heatmap", "svg.chart-lines", "svg.chart-val",
             ".gallery-item", ".gallery-item img", "polyline.series", "rect.bar", "rect.cell")

PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    errors.push('error: ' + (e.message || (t && (t.src || t.href || t.outerHTML)) || 'unknown'));
  }, true);
  ['error', 'warn'].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      errors.push(level + ': ' + Array.prototype.join.call(arguments, ' '));
      return original.apply(console, arguments);
    };
  });
  document.addEventListener('securitypolicyviolation', function (e) {
    errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  window.addEventListener('load', function () { setTimeout(function () {
    var out = {errors: errors, height: document.documentElement.scrollHeight, elements: {},
               captions: []};
    SELECTORS.forEach(function (sel) {
      out.elements[sel] = Array.prototype.map.call(document.querySelectorAll(sel), function (el) {
        var r = el.getBoundingClientRect();
        return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height,
                natural: el.naturalWidth === undefined ? null : el.naturalWidth,
                complete: el.complete === undefined ? null : el.complete};
      });
    });
    document.querySelectorAll('.gallery-item figcaption').forEach(function (c) {
      out.captions.push(c.textContent);
    });
    var pre = document.createElement('pre');
    pre.id = 'zsplg-probe';
    pre.style.display = 'none';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 0); });
})();
</script>""".replace("SELECTORS", json.dumps(list(SELECTORS)))


@dataclass
class Loaded:
    probe: dict
    console: list[str]
    screenshot: np.ndarray


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--mute-audio", f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def open_in_browser(binary: str, html: Path, work: Path) -> Loaded:
    """Load html with the probe: (probe record, console lines, full-page screenshot)."""
    work.mkdir(parents=True, exist_ok=True)
    page = work / "probed.html"
    text = html.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    url = page.resolve().as_uri()
    dom = _chromium(binary, work / "profile-dom", f"--window-size={WIDTH},1000", "--dump-dom",
                    url)
    found = re.search(r'<pre id="zsplg-probe"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no probe output; chromium said: {dom.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">")
                       .replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    height = int(min(max(probe["height"], 200), 16000))
    shot = work / "screenshot.png"
    result = _chromium(binary, work / "profile-shot", f"--window-size={WIDTH},{height}",
                       f"--screenshot={shot}", url)
    assert shot.is_file(), f"no screenshot; chromium said: {result.stderr[-2000:]}"
    return Loaded(probe, console, np.asarray(Image.open(shot).convert("RGB")))


def assert_loaded_cleanly(loaded: Loaded) -> None:
    assert loaded.probe["errors"] == []
    assert loaded.console == []


def assert_visible(loaded: Loaded, selector: str, at_least: int = 1) -> list[dict]:
    """Elements exist, have size, and their part of the screenshot is not blank."""
    boxes = loaded.probe["elements"][selector]
    assert len(boxes) >= at_least, f"{selector}: {len(boxes)} elements"
    shot = loaded.screenshot
    for box in boxes:
        assert box["w"] > 0 and box["h"] > 0, f"{selector} has no size: {box}"
        if box["natural"] is not None:  # an <img>: decoded, not broken
            assert box["complete"] and box["natural"] > 0, f"{selector} image did not load"
    box = boxes[0]
    y0, x0 = int(box["y"]), int(box["x"])
    region = shot[y0:y0 + int(box["h"]), x0:x0 + int(box["w"])]
    assert region.size > 0, f"{selector} lies outside the screenshot"
    assert region.std() > 10, f"{selector} is blank in the screenshot"
    return boxes


def _region(loaded: Loaded, box: dict) -> np.ndarray:
    y0, x0 = int(box["y"]), int(box["x"])
    return loaded.screenshot[y0:y0 + max(int(box["h"]), 1), x0:x0 + max(int(box["w"]), 1)]


def painted(loaded: Loaded, selector: str) -> int:
    """How many of the elements have a non-white centre pixel in the screenshot."""
    count = 0
    for box in loaded.probe["elements"][selector]:
        if box["w"] < 2 or box["h"] < 2:
            continue
        y, x = int(box["y"] + box["h"] / 2), int(box["x"] + box["w"] / 2)
        count += int(np.abs(loaded.screenshot[y, x].astype(int) - 255).max() > 40)
    return count


def colour_pixels(loaded: Loaded, box: dict, hex_colour: str, tolerance: int = 40) -> int:
    """Pixels of roughly this colour inside box: a drawn line or bar, not just text."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    diff = np.abs(_region(loaded, box).astype(int) - rgb).max(axis=-1)
    return int((diff <= tolerance).sum())


def assert_screenshot_not_blank(loaded: Loaded) -> None:
    shot = loaded.screenshot
    assert shot.shape[1] == WIDTH and shot.shape[0] >= 200
    colours = np.unique(shot[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 50 and shot.std() > 20


# --------------------------------------------------------------------------- tests


def test_label_report_in_browser(runs, chromium, tmp_path):
    html = write_report(runs["label"], tmp_path / "label.html")
    loaded = open_in_browser(chromium, html, tmp_path / "browser")
    assert_loaded_cleanly(loaded)
    assert_screenshot_not_blank(loaded)
    assert_visible(loaded, "svg.chart-bars", 2)  # pixel shares + computed IoU bars
    assert_visible(loaded, "svg.chart-heatmap")
    assert_visible(loaded, ".gallery-item", 4)
    assert_visible(loaded, ".gallery-item img", 3 * 3 + 2)  # image/pseudo/gt; nogt: 2
    assert painted(loaded, ".gallery-item img") == 3 * 3 + 2  # decoded and drawn
    order = [caption.split(" ")[0] for caption in loaded.probe["captions"]]
    assert order == ["images/bad", "images/mid", "images/good", "images/nogt"]  # worst first


def test_eval_report_in_browser(runs, chromium, tmp_path):
    html = write_report(runs["eval"], tmp_path / "eval.html")
    loaded = open_in_browser(chromium, html, tmp_path / "browser")
    assert_loaded_cleanly(loaded)
    assert_screenshot_not_blank(loaded)
    assert_visible(loaded, "svg.chart-bars")
    assert len(loaded.probe["elements"]["rect.bar"]) == 3  # one bar per defined IoU
    assert painted(loaded, "rect.bar") == 3  # the bars are drawn, not just laid out
    cells = assert_visible(loaded, "svg.chart-heatmap")
    assert len(loaded.probe["elements"]["rect.cell"]) == 3 * 4  # 3 gt x (3 + unlabelled)
    assert cells[0]["w"] > 100
    assert painted(loaded, "rect.cell") >= 3  # the cells holding most of each row are dark
    assert loaded.probe["elements"][".gallery-item"] == []


def test_train_report_in_browser(runs, chromium, tmp_path):
    html = write_report(runs["train"], tmp_path / "train.html")
    loaded = open_in_browser(chromium, html, tmp_path / "browser")
    assert_loaded_cleanly(loaded)
    assert_screenshot_not_blank(loaded)
    charts = assert_visible(loaded, "svg.chart-lines", 4)  # loss, val mIoU, lr, mask ratio
    assert all(c["w"] > 300 and c["h"] > 150 for c in charts)
    loss = charts[0]  # three curves in the first three series colours
    for colour in ("#1f77b4", "#d62728", "#2ca02c"):
        assert colour_pixels(loaded, loss, colour) > 150, colour
    assert_visible(loaded, "svg.chart-val")
    assert len(loaded.probe["elements"]["polyline.series"]) == 3 + 1 + 1 + 1
    assert_visible(loaded, "svg.chart-bars")  # final per-class IoU from metrics.json


def test_probe_catches_a_broken_page(runs, chromium, tmp_path):
    """The harness can fail: an external image is blocked and reported."""
    html = write_report(runs["eval"], tmp_path / "eval.html")
    text = html.read_text().replace("</main>", '<img src="https://example.invalid/x.png"></main>')
    html.write_text(text)
    loaded = open_in_browser(chromium, html, tmp_path / "browser")
    assert any("example.invalid" in e for e in loaded.probe["errors"])
    assert any("Content Security Policy" in line for line in loaded.console)


# --------------------------------------------------------------------------- without a browser


def test_report_is_self_contained_and_scores_like_eval(runs):
    html = render_report(runs["label"])
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:|#)', html)  # nothing fetched
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count('class="gallery-item"') == 4
    # No eval JSON in the label folder: the report scores it itself, like `zsplg eval`.
    assert "computed for this report" in html
    miou = runs["metrics"]["miou"]
    assert f"<th>mIoU</th><td>{miou:.2f}</td>" in html
    capped = render_report(runs["label"], ReportOptions(gallery=2))
    assert capped.count('class="gallery-item"') == 2


def test_label_and_eval_in_one_folder_shows_the_eval_file(runs, tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(runs["label"], folder)
    for name in ("eval.json", "eval_confusion.csv"):
        shutil.copy(runs["eval"] / name, folder / name)
    html = render_report(folder)
    assert "computed for this report" not in html
    assert "Evaluation: eval.json" in html and "label, eval run" in html


def test_eval_report_shows_confidence_floors(runs, tmp_path):
    from zsplg.data.sources import read_pair_list
    from zsplg.evaluate import evaluate_folder, write_eval_outputs

    samples = read_pair_list(runs["root"] / "pairs.txt")
    metrics, cm, _ = evaluate_folder(runs["label"] / "labels", samples, CLASSES,
                                     confidence_floors=(0.3, 0.6))
    folder = tmp_path / "floors"
    write_eval_outputs(folder / "eval.json", metrics, cm, CLASSES)
    html = render_report(folder)
    assert "Only pixels at least this confident" in html
    kept = metrics["confidence_floors"][1]["kept"]
    assert f"<td>{kept:.2f}</td>" in html


def test_report_tolerates_missing_files(runs, tmp_path):
    only_history = tmp_path / "train"
    only_history.mkdir()
    shutil.copy(runs["train"] / "history.jsonl", only_history / "history.jsonl")
    html = render_report(only_history)
    assert "metrics.json not found" in html and "config.yaml not found" in html
    assert "Latest validation (iteration 300)" in html
    assert "<th>unreadable lines</th><td>1</td>" in html
    moved = tmp_path / "moved"
    shutil.copytree(runs["label"], moved)
    (moved / "run.json").write_text(json.dumps({
        **json.loads((moved / "run.json").read_text()),
        "inputs": {"pair_list": "/nowhere/pairs.txt",
                   "classes": json.loads((moved / "run.json").read_text())["inputs"]["classes"]}}))
    html = render_report(moved)
    assert "images not found" in html and html.count('class="gallery-item"') == 4
    html = render_report(moved, ReportOptions(pair_list=runs["root"] / "pairs.txt"))
    assert "images not found" not in html
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a zsplg run"):
        render_report(tmp_path / "empty")


def test_cli_report_writes_the_default_file(runs, tmp_path):
    from typer.testing import CliRunner

    from zsplg.cli import app

    folder = tmp_path / "run"
    shutil.copytree(runs["eval"], folder)
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").read_text().startswith("<!DOCTYPE html>")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "run folder not found" in result.output


# --------------------------------------------------------------------------- gallery, width, charts


def _scored_folder(root: Path, count: int) -> tuple[Path, ReportOptions, list[str]]:
    """A label folder (no run.json) of ``count`` images whose ground truth is wrong in more rows
    as the key grows; returns the folder, the options that find images and classes, and the
    keys from worst to best by the per-image mIoU zsplg computes."""
    folder = root / "scored"
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines, scores = [], {}
    for i in range(count):
        key = f"img{i:02d}"
        image = _photo(i % 4)
        Image.fromarray(image).save(_mkparent(root / "images" / f"{key}.png"))
        pred = _predicted(image)
        pred[pred == 255] = 0
        gt = pred.copy()
        gt[: 2 + 4 * i] = 2  # the top rows are "dog" in the ground truth
        write_label_png(folder / "labels" / f"{key}.png", pred)
        write_label_png(root / "gt" / f"{key}.png", gt)
        lines.append(f"images/{key}.png gt/{key}.png")
        cm = ConfusionMatrix(len(CLASSES))
        cm.update(pred, gt)
        scores[key] = compute_metrics(cm, CLASSES)["miou"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    options = ReportOptions(pair_list=root / "pairs.txt", classes=root / "classes.txt")
    return folder, options, sorted(scores, key=lambda k: (scores[k], k))


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _gallery(html: str) -> list[tuple[str, str]]:
    """(key, group) of every gallery item, in page order."""
    return re.findall(r'<figure class="gallery-item" data-group="(\w+)">.*?<figcaption>(\S+)',
                      html, re.S)


def test_gallery_pick_takes_worst_median_and_best():
    scores = [ImageScore(f"k{i}", miou=float(i), has_gt=True) for i in range(10)]
    ranked, unranked, ranked_by = rank([*scores, ImageScore("nogt", confidence=0.1)])
    assert ranked_by == "mIoU" and [s.key for s in unranked] == ["nogt"]
    picked = [(s.key, group) for s, group in pick(ranked, unranked, 6)]
    assert picked == [("k0", "worst"), ("k1", "worst"), ("k4", "median"), ("k5", "median"),
                      ("k8", "best"), ("k9", "best")]
    assert [(s.key, g) for s, g in pick(ranked, unranked, 2)] == [("k0", "worst"),
                                                                  ("k9", "best")]
    everything = pick(ranked, unranked, 24)  # all fit: the ranking cut in thirds, then the rest
    assert [g for _, g in everything] == ["worst"] * 4 + ["median"] * 3 + ["best"] * 3 + [
        "unranked"]
    # Without ground truth the labeller's confidence ranks.
    ranked, unranked, ranked_by = rank([ImageScore("a", confidence=0.9),
                                        ImageScore("b", confidence=0.2), ImageScore("c")])
    assert ranked_by == "confidence" and [s.key for s in ranked] == ["b", "a"]
    assert [s.key for s in unranked] == ["c"]


def test_gallery_shows_worst_median_and_best_with_a_filter(tmp_path):
    folder, options, worst_to_best = _scored_folder(tmp_path, 9)
    options.gallery = 6
    html = render_report(folder, options)
    shown = [(key, group) for group, key in _gallery(html)]
    assert shown == [(worst_to_best[0], "worst"), (worst_to_best[1], "worst"),
                     (worst_to_best[3], "median"), (worst_to_best[4], "median"),
                     (worst_to_best[7], "best"), (worst_to_best[8], "best")]
    assert "6 of 9 images" in html
    for group, count in (("all", 6), ("worst", 2), ("median", 2), ("best", 2)):
        assert f'id="gallery-{group}"' in html
        assert f'<label for="gallery-{group}">{group} ({count})</label>' in html


def test_gallery_filter_and_full_width_in_browser(tmp_path, chromium):
    folder, options, _ = _scored_folder(tmp_path, 9)
    options.gallery = 6
    html = write_report(folder, tmp_path / "gallery.html", options)
    visible = ("Array.prototype.filter.call(document.querySelectorAll('.gallery-item'), "
               "function (e) { return e.getBoundingClientRect().width > 0; }).length")
    script = f"""
      var out = {{all: {visible}, width: window.innerWidth,
                 main: document.querySelector('main').getBoundingClientRect().width,
                 section: document.querySelector('section').getBoundingClientRect().width}};
      ['worst', 'median', 'best', 'all'].forEach(function (group) {{
        document.querySelector('label[for=gallery-' + group + ']').click();
        out[group] = {visible};
      }});
      return out;"""
    out = run_script(chromium, html, tmp_path / "browser", script, width=2400)
    assert out["all"] == 6 and out["worst"] == out["median"] == out["best"] == 2
    # No fixed maximum width: on a wide screen the content is as wide as the window.
    assert out["width"] == 2400
    assert out["main"] >= out["width"] - 1 and out["section"] > 0.9 * out["width"]


def run_script(binary: str, html: Path, work: Path, body: str, width: int = WIDTH) -> dict:
    """Load html, run ``body`` (JS that returns a JSON-able value) after load; its result.

    No screenshot: layout is read from the DOM (--dump-dom).
    """
    work.mkdir(parents=True, exist_ok=True)
    page = work / "scripted.html"
    probe = ("<script>window.addEventListener('load', function () { setTimeout(function () {"
             "var out = (function () {" + body + "})();"
             "var pre = document.createElement('pre'); pre.id = 'zsplg-probe';"
             "pre.style.display = 'none'; pre.textContent = JSON.stringify(out);"
             "document.body.appendChild(pre); }, 0); });</script>")
    page.write_text(html.read_text(encoding="utf-8").replace("<head>", "<head>" + probe, 1),
                    encoding="utf-8")
    dom = _chromium(binary, work / "profile", f"--window-size={width},1000", "--dump-dom",
                    page.resolve().as_uri())
    found = re.search(r'<pre id="zsplg-probe"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no probe output; chromium said: {dom.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&quot;", '"').replace("&amp;", "&"))


def test_page_has_no_fixed_maximum_width(runs):
    html = render_report(runs["eval"])
    main_rule = re.search(r"(?:^|\})main\{([^}]*)\}", html, re.M)
    assert main_rule and "max-width" not in main_rule.group(1)


def _plot_box(svg: str) -> tuple[float, float, float, float]:
    x, y, w, h = map(float, re.search(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                                       r'height="([\d.]+)" fill="none"', svg).groups())
    return x, y, x + w, y + h


def test_train_charts_with_one_step_and_with_none(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "history.jsonl").write_text(json.dumps({"iter": 10, "loss": 1.25, "lr": 0.01}) + "\n")
    html = render_report(one)
    charts = re.findall(r'<svg class="chart chart-lines".*?</svg>', html, re.S)
    assert len(charts) == 2  # loss and learning rate; no validation yet
    for svg in charts:  # a visible marker inside the plot, its value, and why there is no line
        x0, y0, x1, y1 = _plot_box(svg)
        cx, cy = map(float, re.search(r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)" r="5"',
                                      svg).groups())
        assert x0 < cx < x1 and y0 < cy < y1
        assert "one step logged" in svg
    assert ">1.25</text>" in charts[0] and ">0.01</text>" in charts[1]
    assert "not logged yet: validation mIoU" in html

    only_val = tmp_path / "only-val"
    only_val.mkdir()
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1, 2]], dtype=np.uint8), np.array([[0, 1, 1]], dtype=np.uint8))
    (only_val / "history.jsonl").write_text(
        json.dumps({"iter": 50, "val": compute_metrics(cm, CLASSES)}) + "\n")
    html = render_report(only_val)
    assert html.count('<svg class="chart chart-lines') == 1  # validation only: no empty loss
    assert "chart-val" in html and "not logged yet: training loss" in html

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "history.jsonl").write_text("")
    html = render_report(empty)
    assert "chart-lines" not in html.split("<body>", 1)[1]
    assert "history.jsonl has no plottable records" in html


def test_text_from_the_run_folder_is_escaped(runs, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(runs["label"], folder)
    info = json.loads((folder / "run.json").read_text())
    info["settings"]["note"] = "<script>alert(1)</script>"
    info["device"] = 'a"b&c'
    info["inputs"]["classes"]["classes"][1] = {"name": "<cat>"}
    (folder / "run.json").write_text(json.dumps(info))
    html = render_report(folder)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&#34;b&amp;c" in html
    assert "<cat>" not in html and "&lt;cat&gt;" in html  # in tables, charts and the legend


def test_report_takes_run_folder_names_from_run_folder():
    """report/ names run-folder files through zsplg.data.run_folder, never by literal."""
    import zsplg.report

    package = Path(zsplg.report.__file__).parent
    names = ("run.json", "errors.jsonl", "metrics.json", "history.jsonl", "config.yaml")
    for path in [*package.glob("*.py"), *(package / "templates").iterdir()]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":  # docstrings may name them; code may not
            text = re.sub(r'"""(.*?)"""', "", text, flags=re.S)
            found = [n for n in names if f'"{n}' in text or f"'{n}" in text]
            found += [n for n in ("labels", "confidence")  # as a path part
                      if re.search(rf"""/ ["']{n}["']|["']{n}/""", text)]
        else:
            found = [n for n in names if n in text]
        assert found == [], f"{path.name}: {found}"
