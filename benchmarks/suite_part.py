"""Run one part of gpu_suite.sh and print one JSON line about it, whatever happens.

A suite on a borrowed GPU gets one try: a part that crashes, hangs or prints no JSON
must not cost the parts after it their figures. So each part runs as a child process
under its own time limit, its whole output goes to OUT/NAME.log, and this prints
``{"part": NAME, "rc": ..., "seconds": ..., "result": <the part's last JSON line>}``
(``"error"`` instead of ``"result"`` when it failed), and appends it to
OUT/suite.jsonl.

    python benchmarks/suite_part.py --name label_speed --timeout 120 --out DIR -- CMD ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def last_json(text: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.name}.log"
    started = time.time()
    record: dict = {"part": args.name}
    with log.open("w") as handle:
        try:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle, text=True,
                                  timeout=args.timeout)
            stdout, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout
            stdout = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
            rc = None
            record["error"] = f"timed out after {args.timeout:g} s"
        handle.write("\n--- stdout ---\n" + stdout)
    record["rc"] = rc
    record["seconds"] = round(time.time() - started, 1)
    result = last_json(stdout)
    if result is not None:
        record["result"] = result
    if rc not in (0, None):
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        record["error"] = f"exit {rc}: " + " | ".join(tail)[-400:]
    elif result is None and "error" not in record:
        record["error"] = "no JSON on stdout"
    line = json.dumps(record)
    with (args.out / "suite.jsonl").open("a") as handle:
        handle.write(line + "\n")
    print(line, flush=True)
    return 0 if "error" not in record else 1


if __name__ == "__main__":
    sys.exit(main())
