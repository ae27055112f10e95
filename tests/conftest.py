"""Test-wide isolation: no test may see model weights a developer has cached,
or `auto` backend selection would depend on the machine."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _empty_weights_dir(tmp_path_factory):
    previous = os.environ.get("ZSPLG_WEIGHTS_DIR")
    os.environ["ZSPLG_WEIGHTS_DIR"] = str(tmp_path_factory.mktemp("no-weights"))
    yield
    if previous is None:
        os.environ.pop("ZSPLG_WEIGHTS_DIR", None)
    else:
        os.environ["ZSPLG_WEIGHTS_DIR"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module with one torch thread (set back afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_vl_backend():
    """One vision-language model per (name, options) for a whole module: loading ConSE
    is the slow part of every in-process `zsplg label` call."""
    import zsplg.labeling.labeller as labeling

    real = labeling.build_vl_model
    built = {}

    def build_once(name="auto", device="cpu", **options):
        key = (name, device, tuple(sorted(options.items())))
        if key not in built:
            built[key] = real(name, device=device, **options)
        return built[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(labeling, "build_vl_model", build_once)
        yield built
