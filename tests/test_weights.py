"""Weight files of the metrics: path resolution, checks, and `cvae weights fetch/list` against a local HTTP server."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.errors import ToolkitError
from toolkit.eval import weights


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reads stderr: only the CLI's line may be there
        pass


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def mirror(tmp_path):
    """A served directory holding both files (random bytes), the table patched to identify exactly these bytes
    (alexnet by its sha256 prefix, i3d by its git blob id, as the real entries), and the server's URL."""
    site = tmp_path / "site"
    site.mkdir()
    payload = {}
    for i, w in enumerate(weights.TABLE.values()):
        payload[w.name] = hashlib.sha256(str(i).encode()).digest() * 40000 + bytes(range(256))  # ~1.3 MB
        (site / w.file_name).write_bytes(payload[w.name])
    server = serve(site)
    yield site, payload, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def patch_table(monkeypatch, site: Path) -> None:
    i3d = weights.TABLE["i3d"]
    blob = subprocess.run(["git", "hash-object", str(site / i3d.file_name)], capture_output=True, text=True,
                          check=True).stdout.strip()
    for name in ("alexnet", "vgg16"):
        w = weights.TABLE[name]
        monkeypatch.setitem(weights.TABLE, name, dataclasses.replace(
            w, sha256_prefix=weights.sha256_of(site / w.file_name)[:8]))
    monkeypatch.setitem(weights.TABLE, "i3d", dataclasses.replace(i3d, git_blob=blob))


def cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_git_blob_id_and_sha256_are_those_of_git_and_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 5000)
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert weights.git_blob_of(path) == git
    assert weights.sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resolve_prefers_the_option_then_the_env_dir_then_torch_hub(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.resolve("alexnet") == tmp_path / "th" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path / "w"))
    assert weights.resolve("i3d") == tmp_path / "w" / "i3d_pretrained_400.pt"
    assert weights.resolve("i3d", tmp_path / "mine.pt") == tmp_path / "mine.pt"
    assert weights.resolve("i3d", tmp_path) == tmp_path / "i3d_pretrained_400.pt"  # a directory holds the file
    with pytest.raises(ToolkitError, match="unknown weight file 'vgg'; known: alexnet, vgg16, i3d"):
        weights.resolve("vgg")


def test_check_verifies_the_known_name_and_records_any_other(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path / "w"))
    known = tmp_path / "alexnet-owt-7be5be79.pth"
    known.write_bytes(b"not the torchvision file")
    with pytest.raises(ToolkitError) as e:
        weights.check("alexnet", known)
    assert str(e.value).startswith(f"{known}: sha256 ") and "does not start with 7be5be79" in str(e.value)
    other = tmp_path / "my_alexnet.pth"
    other.write_bytes(b"not the torchvision file")
    record = weights.check("alexnet", other)
    assert record["verified"] is False and record["sha256"] == hashlib.sha256(b"not the torchvision file").hexdigest()
    with pytest.raises(ToolkitError) as e:
        weights.check("i3d", weights.resolve("i3d"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "w" / "i3d_pretrained_400.pt"))
    assert "`cvae weights fetch i3d`" in msg


def test_fetch_downloads_checks_and_lists(mirror, tmp_path, monkeypatch, capsys):
    site, payload, url = mirror
    patch_table(monkeypatch, site)
    dest = tmp_path / "dest"
    main(["weights", "fetch", "--dest", str(dest), "--base-url", url, "--quiet"])
    for w in weights.TABLE.values():
        assert (dest / w.file_name).read_bytes() == payload[w.name]
    out = capsys.readouterr().out
    assert "alexnet: fetched, sha256 prefix" in out and "i3d: fetched, git blob" in out
    main(["weights", "list", "--dest", str(dest)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["alexnet", "verified", "(sha256"]
    assert out[2].split()[:3] == ["vgg16", "verified", "(sha256"]
    assert out[4].split()[:3] == ["i3d", "verified", "(git"]
    assert out[1].split() == ["sha256", hashlib.sha256(payload["alexnet"]).hexdigest()]
    main(["weights", "fetch", "i3d", "--dest", str(dest), "--base-url", url, "--quiet"])  # kept, not fetched again
    assert capsys.readouterr().out.startswith("i3d: present, git blob")
    (dest / "i3d_pretrained_400.pt").write_bytes(b"damaged")
    main(["weights", "list", "--dest", str(dest)])
    assert capsys.readouterr().out.splitlines()[4].split()[:2] == ["i3d", "MISMATCH"]
    main(["weights", "fetch", "i3d", "--dest", str(dest), "--base-url", url, "--quiet"])  # replaced
    assert (dest / "i3d_pretrained_400.pt").read_bytes() == payload["i3d"]


def test_a_mismatching_download_is_an_error_and_writes_nothing(mirror, tmp_path, capsys):
    _, _, url = mirror  # the real table: these bytes are not torchvision's AlexNet
    line = cli_error(["weights", "fetch", "alexnet", "--dest", str(tmp_path / "d"), "--base-url", url, "--quiet"],
                     capsys)
    assert line.startswith(f"error: alexnet-owt-7be5be79.pth from {url}alexnet-owt-7be5be79.pth: sha256 ")
    assert "does not start with 7be5be79" in line and list((tmp_path / "d").iterdir()) == []
    line = cli_error(["weights", "fetch", "i3d", "--dest", str(tmp_path / "d"), "--base-url", url, "--quiet"], capsys)
    assert "git blob id" in line and "a867b87ac3a9097d200598b1d48a1b890d8ec744" in line
    assert list((tmp_path / "d").iterdir()) == []


def test_http_404_and_a_refused_connection_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve(empty)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        line = cli_error(["weights", "fetch", "i3d", "--dest", str(tmp_path / "d"), "--base-url", url], capsys)
    finally:
        server.shutdown()
    assert line == (f"error: cannot fetch i3d_pretrained_400.pt from {url}/i3d_pretrained_400.pt: "
                    "HTTP 404 File not found")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = cli_error(["weights", "fetch", "alexnet", "--dest", str(tmp_path / "d"), "--base-url",
                      f"http://127.0.0.1:{port}/"], capsys)
    assert line.startswith(f"error: cannot fetch alexnet-owt-7be5be79.pth from http://127.0.0.1:{port}/alexnet")
    assert "Connection refused" in line
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []
