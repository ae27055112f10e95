#!/usr/bin/env bash
# The GPU figures in one run: one JSON line per part (benchmarks/suite_part.py), each
# part under its own time limit so one failure costs only its own line.
#
#   bash benchmarks/gpu_suite.sh                        # CUDA, full size (about 9 min on an H100)
#   bash benchmarks/gpu_suite.sh --device cpu --smoke   # every part at toy size (CPU, < 5 min)
#
# Options: --device cuda|cpu (default cuda), --smoke, --out DIR (default gpu-suite-out:
# logs and suite.jsonl), --work DIR (training runs; default OUT/work), --camvid DIR
# (CamVid layout: images/, labels/, train.txt, val.txt, classes.txt; default
# ../shared/data/camvid beside the repository) and
# --pseudo-labels DIR (a `zsplg label` output folder for CamVid's unlabelled train
# images) for the semi-supervised part, which is skipped when either is missing.
# PYTHON picks the interpreter (default python3). Exit status: 0 when every part gave
# its figures, 1 otherwise.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
device=cuda
smoke=0
out=gpu-suite-out
work=""
camvid="$here/../../shared/data/camvid"
pseudo=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --camvid) camvid="$2"; shift 2 ;;
    --pseudo-labels) pseudo="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cuda|cpu) ;;
  *) echo "error: gpu_suite.sh: --device must be cuda or cpu, got $device" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"
work="${work:-$out/work}"
mkdir -p "$out" "$work"
: > "$out/suite.jsonl"
export PYTHONUNBUFFERED=1
failed=0

part() {  # part NAME TIMEOUT_SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  "$py" "$here/suite_part.py" --name "$name" --timeout "$limit" --out "$out" -- "$@" || failed=1
}

part environment 60 "$py" -c '
import json, platform, torch, zsplg
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "zsplg": zsplg.__version__, "cuda": torch.version.cuda if cuda else None,
                  "gpu": torch.cuda.get_device_name(0) if cuda else None,
                  "cpu_threads": torch.get_num_threads()}))'

if [ "$smoke" = 1 ]; then
  part label_speed 120 "$py" "$here/label_speed.py" --device "$device" --smoke
  part precision 120 "$py" "$here/precision_agreement.py" --device "$device" --smoke
  part train_step 90 "$py" "$here/train_step.py" --device "$device" --smoke
  part label_memory 120 "$py" "$here/label_memory.py" --models random --device "$device" --smoke
  part semi_supervised 150 "$py" "$here/semi_supervised.py" --device "$device" --smoke \
    --data-root "$camvid" --out "$work/semi"
else
  # SAM ViT-B and CLIP ViT-B/16 + GEM at full size, 1024 px images, SAM 2.1 tiny row
  part label_speed 100 "$py" "$here/label_speed.py" --device "$device" --synthetic \
    --long-side 1024 --images 4 --sam2 tiny
  part precision 70 "$py" "$here/precision_agreement.py" --device "$device" --images 4
  part train_step 60 "$py" "$here/train_step.py" --device "$device" --amp both \
    --batch-size 8 --crop 512 --steps 8
  part label_memory 120 "$py" "$here/label_memory.py" --models random --device "$device" \
    --sam vit_b --clip vit_b16 --points-per-side 32 --synthetic 200 --long-side 1024
  if [ -n "$pseudo" ] && [ -d "$pseudo" ] && [ -d "$camvid" ]; then
    part semi_supervised 150 "$py" "$here/semi_supervised.py" --device "$device" \
      --data-root "$camvid" --pseudo-labels "$pseudo" --rows supervised,unimatch,enhanced \
      --seeds 0 --iters 300 --batch-size 8 --crop 256 --workers 8 --out "$work/semi"
  else
    line='{"part": "semi_supervised", "skipped": "needs --camvid and --pseudo-labels folders"}'
    echo "$line" | tee -a "$out/suite.jsonl"
  fi
fi
exit "$failed"
