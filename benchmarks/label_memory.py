"""Memory over a long `zsplg label` run: does resident memory grow with the image count?

Runs `zsplg label` as a child process and samples its resident set size (RSS)
and high-water mark from /proc (Linux) every --interval seconds, together with
how many label PNGs exist. Prints one JSON object: RSS and peak after
checkpoints of 1, 10, 50, 100, ... images, the mean RSS over each tenth of the
images, and the RSS range after the first 50 (allocator warm-up). A leak
shows as RSS rising with the count; a flat RSS with a slowly rising peak means
larger transient allocations (bigger images), not kept memory.

    python benchmarks/label_memory.py --from ../shared/data/voc2012-mini/train.txt \\
        ../shared/data/voc2012-mini/val.txt ../shared/data/camvid/train.txt --limit 500 \\
        --classes ../shared/data/voc2012-mini/classes.txt -- --masks superpixel --vl conse

`--from` takes the image column of pair-lists (in order, first --limit);
`--list` takes an image list as it is.

`--passes N` labels the same images N times in this process instead (through
the Python API, `Labeller.label_array`), printing this process's RSS per pass:
with no leak, pass 2 stays at pass 1's level, whatever the image sizes.

Arguments after `--` go to `zsplg label` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None once the process is gone."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def own_rss_mib() -> int:
    status = read_status(os.getpid())
    return round(status[0] / 1024) if status else -1


def repeated_passes(images: list[Path], classes: Path, passes: int, extra: list[str]) -> dict:
    """Label the same images `passes` times in this process; RSS after each tenth."""
    import torch

    from zsplg.data.classes import load_class_spec
    from zsplg.data.images import read_image
    from zsplg.labeling.run import Labeller

    options = dict(zip(extra[::2], extra[1::2], strict=False))
    torch.set_num_threads(2)
    labeller = Labeller.from_names(load_class_spec(classes), options.get("--masks", "auto"),
                                   options.get("--vl", "auto"), device="cpu")
    arrays = [read_image(p, max_side=1024) for p in images]
    started, out = time.perf_counter(), []
    for number in range(passes):
        marks = {}
        for index, array in enumerate(arrays):
            labeller.label_array(array)
            if (index + 1) % max(len(arrays) // 10, 1) == 0 or index + 1 == len(arrays):
                marks[str(index + 1)] = own_rss_mib()
        out.append({"pass": number + 1, "rss_mib_after_images": marks})
    return {"images": len(arrays), "passes": out,
            "seconds": round(time.perf_counter() - started)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, help="images to label")
    parser.add_argument("--from", dest="pair_lists", nargs="+", type=Path, default=[],
                        help="pair-lists whose images to label, in order")
    parser.add_argument("--limit", type=int, default=0, help="label the first N images only")
    parser.add_argument("--classes", required=True, type=Path)
    parser.add_argument("--out", type=Path, help="label folder (default: a temp folder)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--passes", type=int, default=0,
                        help="label the images this many times in-process instead")
    args = parser.parse_args(own)
    work = Path(tempfile.mkdtemp(prefix="zsplg-memory-"))
    out = args.out or work / "run"
    if bool(args.list) == bool(args.pair_lists):
        parser.error("give --list or --from")
    images = [Path(line.split()[0]) for line in args.list.read_text().splitlines()
              if line.strip()] if args.list else [
        (pairs.parent / line.split()[0]).resolve() for pairs in args.pair_lists
        for line in pairs.read_text().splitlines() if line.strip()]
    if args.limit:
        images = images[: args.limit]
    if args.passes:
        print(json.dumps(repeated_passes(images, args.classes, args.passes, extra), indent=2))
        return 0
    image_list = work / "images.txt"
    image_list.write_text("".join(f"{p}\n" for p in images))
    command = [sys.executable, "-m", "zsplg.cli", "label", "--list", str(image_list),
               "--classes", str(args.classes), "--out", str(out), *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    samples: list[tuple[int, int, int]] = []  # (labels written, rss KiB, peak KiB)
    while child.poll() is None:
        status = read_status(child.pid)
        if status is not None:
            labels = out / "labels"
            done = sum(1 for _ in labels.rglob("*.png")) if labels.is_dir() else 0
            samples.append((done, *status))
        time.sleep(args.interval)
    stderr = child.stderr.read() if child.stderr else ""
    if child.returncode != 0:
        print(stderr[-2000:], file=sys.stderr)
        return child.returncode
    total = max((s[0] for s in samples), default=0)
    checkpoints = [n for n in (1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000)
                   if n <= total] + [total]
    at = {}
    for n in sorted(set(checkpoints)):
        first = next((s for s in samples if s[0] >= n), None)
        if first is not None:
            at[str(n)] = {"rss_mib": round(first[1] / 1024), "peak_mib": round(first[2] / 1024)}
    warm = [s[1] for s in samples if s[0] >= min(50, total)]
    # mean RSS over each tenth of the images: single samples swing with image size
    tenths = {}
    for k in range(10):
        low, high = total * k // 10, total * (k + 1) // 10
        window = [s[1] for s in samples if low < s[0] <= high]
        if window:
            tenths[f"{low + 1}-{high}"] = round(sum(window) / len(window) / 1024)
    print(json.dumps({
        "command": command[2:], "images": total, "seconds": round(time.perf_counter() - started),
        "samples": len(samples), "at_images": at, "mean_rss_mib_by_tenth": tenths,
        "rss_mib_after_50": {"min": round(min(warm) / 1024), "max": round(max(warm) / 1024)}
        if warm else None,
        "peak_mib": round(max(s[2] for s in samples) / 1024) if samples else None,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
