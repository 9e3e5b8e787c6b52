"""Downloads over a local HTTP server, checksums, and safe archive extraction."""
import functools
import http.server
import io
import os
import socket
import tarfile
import threading
import zipfile

import pytest

from minicnn.data import DownloadError, UnsafeArchiveError, data_root, download, extract_archive
from minicnn.data.download import md5_bytes, md5_file


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served directory) of an HTTP server on 127.0.0.1, stopped after the test."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.bin"


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("MINICNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "minicnn"


def test_download_streams_and_verifies(server, tmp_path):
    url, served = server
    payload = os.urandom(3 * (1 << 20) + 17)  # several chunks
    (served / "blob.bin").write_bytes(payload)
    dest = download(url + "blob.bin", tmp_path / "out" / "blob.bin", md5_bytes(payload), quiet=True)
    assert dest.read_bytes() == payload
    assert md5_file(dest) == md5_bytes(payload)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, served = server
    (served / "blob.bin").write_bytes(b"not what was promised")
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="md5") as e:
        download(url + "blob.bin", out / "blob.bin", "0" * 32, offline_hint="PUT IT THERE", quiet=True)
    assert "PUT IT THERE" in str(e.value)
    assert list(out.iterdir()) == []


def test_mirror_fallback(server, tmp_path):
    url, served = server
    (served / "b.bin").write_bytes(b"payload")
    urls = [closed_port_url(), url + "missing.bin", url + "b.bin"]
    dest = download(urls, tmp_path / "b.bin", md5_bytes(b"payload"), quiet=True)
    assert dest.read_bytes() == b"payload"


def test_all_urls_failing_reports_each_and_the_offline_hint(server, tmp_path):
    url, _ = server
    bad = [closed_port_url(), url + "missing.bin"]
    with pytest.raises(DownloadError) as e:
        download(bad, tmp_path / "out" / "x.bin", "0" * 32, offline_hint="offline: copy x.bin",
                 quiet=True, timeout=5)
    msg = str(e.value)
    assert bad[0] in msg and bad[1] in msg and "404" in msg and "offline: copy x.bin" in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = download(src.as_uri(), tmp_path / "dest" / "d.bin", md5_bytes(b"abc"), quiet=True)
    assert dest.read_bytes() == b"abc"


def test_download_needs_a_url(tmp_path):
    with pytest.raises(ValueError, match="URL"):
        download([], tmp_path / "x", None)


# ---------------------------------------------------------------- archives

def _tar(path, members):
    """members: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def test_extract_tar_with_inner_links(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [
        (_info(".", tarfile.DIRTYPE), None),
        (_info("top", tarfile.DIRTYPE), None),
        (_info("top/a.txt"), b"hello"),
        (_info("top/sub/b.txt"), b"world"),
        (_info("top/link", tarfile.SYMTYPE, "a.txt"), None),
        (_info("top/sub/up", tarfile.SYMTYPE, ".."), None),
        (_info("top/sub/chain", tarfile.SYMTYPE, "up"), None),      # a link to a link, inside
        (_info("top/sub/hard", tarfile.LNKTYPE, "top/a.txt"), None),
    ])
    dest = extract_archive(archive, tmp_path / "dest")
    assert (dest / "top" / "a.txt").read_bytes() == b"hello"
    assert (dest / "top" / "sub" / "b.txt").read_bytes() == b"world"
    assert (dest / "top" / "link").read_bytes() == b"hello"
    assert (dest / "top" / "sub" / "chain" / "a.txt").read_bytes() == b"hello"
    assert (dest / "top" / "sub" / "hard").read_bytes() == b"hello"


@pytest.mark.parametrize("member", [
    (_info("../evil.txt"), b"x"),
    (_info("ok/../../evil.txt"), b"x"),
    (_info("/tmp/minicnn-evil.txt"), b"x"),
    (_info("link", tarfile.SYMTYPE, "../outside"), None),
    (_info("d/link", tarfile.SYMTYPE, "../../outside"), None),
    (_info("link", tarfile.SYMTYPE, "/etc/passwd"), None),
    (_info("hard", tarfile.LNKTYPE, "../outside"), None),
    (_info("fifo", tarfile.FIFOTYPE), None),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "nested-symlink-up",
        "symlink-absolute", "hardlink-up", "fifo"])
def test_extract_refuses_escaping_tar_members(tmp_path, member):
    archive = _tar(tmp_path / "bad.tar.gz", [(_info("innocent.txt"), b"ok"), member])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []          # checked before anything was written
    assert not (tmp_path / "evil.txt").exists()



def _assert_refused(tmp_path, archive, dest, match):
    """Extraction raises naming the member, and writes nothing anywhere under tmp_path."""
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_archive(archive, dest)
    assert set(tmp_path.rglob("*")) == before | {dest}


@pytest.mark.parametrize("members, match", [
    # d/l -> .. is harmless alone (it is dest); what goes through it is refused.
    ([("d/l", ".."), ("d/l/m", "..")], r"'d/l/m' refused: its path passes through the symlink 'd/l'"),
    ([("d/l", ".."), ("d/l/../../evil.txt", b"x")], r"'d/l/\.\./\.\./evil.txt' refused.*symlink 'd/l'"),
    ([("d/l", ".."), ("e", "d/l/../../evil.txt")], r"symlink 'e' -> .* its target passes through .*'d/l'"),
    ([("d/l", ".."), ("h", tarfile.LNKTYPE, "d/l/../../evil.txt")], r"hard link 'h' -> .*'d/l'"),
    ([("d/L", ".."), ("d/l/../../evil.txt", b"x")], r"symlink 'd/l'"),  # case-insensitive filesystems
    ([("d/l/../../evil.txt", b"x"), ("d/l", "..")], r"symlink 'd/l'"),  # link after: refused all the same
    ([("d/l", "/etc"), ("d/l/passwd", b"x")], r"symlink 'd/l' -> '/etc' refused: its target is absolute"),
], ids=["link-chain", "file-through-link", "link-through-link", "hardlink-through-link",
        "through-link-other-case", "link-listed-later", "link-to-absolute"])
def test_extract_refuses_paths_through_tar_symlinks(tmp_path, members, match):
    def member(spec):
        if len(spec) == 3:
            return _info(spec[0], spec[1], spec[2]), None
        name, payload = spec
        if isinstance(payload, bytes):
            return _info(name), payload
        return _info(name, tarfile.SYMTYPE, payload), None

    archive = _tar(tmp_path / "bad.tar.gz", [(_info("innocent.txt"), b"ok")] + [member(m) for m in members])
    dest = tmp_path / "dest"
    _assert_refused(tmp_path, archive, dest, match)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name, match", [
    ("out/evil.txt", r"'out/evil.txt' refused: its path passes through the symlink 'out'"),
    ("d/e/up/../evil.txt", r"passes through the symlink 'd/e/up'"),
    ("file.txt", r"'file.txt' refused: its path ends on a link already in .* that leads outside"),
])
def test_extract_refuses_paths_through_links_already_in_dest(tmp_path, name, match):
    (tmp_path / "outside").mkdir()
    dest = tmp_path / "dest"
    (dest / "d" / "e").mkdir(parents=True)
    (dest / "out").symlink_to(tmp_path / "outside")
    (dest / "d" / "e" / "up").symlink_to("../..")               # dest itself, but '..' past it is not
    (dest / "file.txt").symlink_to(tmp_path / "outside" / "file.txt")
    archive = _tar(tmp_path / "bad.tar.gz", [(_info("innocent.txt"), b"ok"), (_info(name), b"x")])
    _assert_refused(tmp_path, archive, dest, match)
    assert not (dest / "innocent.txt").exists()


def test_extract_zip(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/a.txt", "zipped")
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "d" / "a.txt").read_text() == "zipped"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_zip_traversal(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_extract_refuses_zip_symlink_outside(tmp_path):
    archive = tmp_path / "bad.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract_archive(archive, tmp_path / "dest")


def test_extract_rejects_non_archive(tmp_path):
    p = tmp_path / "plain.tar.gz"
    p.write_bytes(b"this is not an archive")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract_archive(p, tmp_path / "dest")


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Streams zeros without a Content-Length until the client hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_download_size_is_bounded(server, tmp_path):
    url, served = server
    (served / "big.bin").write_bytes(bytes(3 << 20))
    with pytest.raises(DownloadError, match=r"announced 3145728 bytes, more than max_bytes=1048576"):
        download(url + "big.bin", tmp_path / "out" / "big.bin", None, quiet=True, max_bytes=1 << 20)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError, match=r"more than max_bytes=1048576"):
            download(f"http://127.0.0.1:{httpd.server_address[1]}/endless", tmp_path / "out" / "e.bin", None,
                     quiet=True, max_bytes=1 << 20)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert list((tmp_path / "out").iterdir()) == []
