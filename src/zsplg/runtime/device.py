"""The one place a device name becomes a torch device.

Every command takes ``--device auto|cpu|cuda|cuda:N|mps``. The name is checked
twice: its spelling before any file is read (:func:`check_device_name`, no
torch import), and its availability before any output folder is made
(:func:`resolve_device`), so ``--device cuda`` on a machine without a GPU is
one line naming the option, not a driver traceback an hour into a run.
"""

from __future__ import annotations

import platform
import re

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
_CUDA_INDEXED = re.compile(r"^cuda:\d+$")


class DeviceError(ValueError):
    """The device asked for does not exist or is not usable here."""


def check_device_name(name: str) -> None:
    """Spelling only: auto, cpu, cuda, cuda:N or mps."""
    if name in DEVICE_NAMES or _CUDA_INDEXED.match(name):
        return
    raise DeviceError(f"--device: {name!r} is not one of {', '.join(DEVICE_NAMES)} (or cuda:N)")


def resolve_device(name: str = "auto", local_rank: int | None = None) -> str:
    """``auto`` -> the best device here; an explicit one is checked to be usable.

    ``local_rank``: under torchrun, each process takes ``cuda:LOCAL_RANK`` for
    ``auto`` and ``cuda``.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{local_rank}" if local_rank is not None else "cuda"
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no usable CUDA GPU here (no driver or no "
                              f"device); use --device cpu, or auto to pick what is available")
        if name == "cuda" and local_rank is not None:
            return f"cuda:{local_rank}"
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
        return name
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if platform.system() != "Darwin" or mps is None or not mps.is_available():
            raise DeviceError("--device mps: Apple's Metal backend is only available on macOS "
                              "with Apple silicon; use --device cpu or auto")
    return name


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision_name(name: str) -> None:
    """Spelling only: auto, fp32, bf16 or fp16."""
    if name not in PRECISIONS:
        raise DeviceError(f"--precision: {name!r} is not one of {', '.join(PRECISIONS)}")


def resolve_precision(name: str, device: str | object) -> str:
    """``auto`` -> bf16 on a CUDA GPU that has it (fp16 on one that does not), fp32
    elsewhere: the encoders' matrix products are most of a labelling run's time, and
    reduced precision is what makes them fast on a GPU; a CPU gains nothing from it.

    Where zsplg uses the result, only the image encoders run in it: the mask decoder,
    the predicted-IoU, stability and NMS decisions, and the naming scores are fp32.
    """
    import torch

    check_precision_name(name)
    kind = torch.device(str(device)).type
    if name == "auto":
        if kind != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    return name


def autocast_for(precision: str, device: str | object):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(str(device)).type, dtype=dtype)
