"""Hostile archives: hard links resolved against the archive's own members, bombs bounded,
and a refused archive leaves nothing behind, with and without Python's ``data`` filter."""
import io
import tarfile
import zipfile

import pytest

from minicnn.data import UnsafeArchiveError, extract_archive
from minicnn.errors import FileFormatError, LimitExceededError, UnsafeFileError


def _info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _tar(path, members, mode="w:gz"):
    """members: (name, bytes) for a file, (name, kind, linkname) for a link or directory."""
    with tarfile.open(path, mode) as tar:
        for m in members:
            if len(m) == 2:
                info = _info(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
            else:
                tar.addfile(_info(*m))
    return path


@pytest.fixture(params=["data filter", "no filter"])
def filter_mode(request, monkeypatch):
    """Run each test with Python's tar 'data' filter, and as on the older 3.10/3.11
    releases that lack it (the checks alone must hold)."""
    if request.param == "no filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def _refused(tmp_path, archive, dest, error, match, **limits):
    """Extraction raises ``error``; afterwards nothing under tmp_path differs: dest holds
    exactly what it held before, and no temporary folder is left."""
    dest.mkdir(exist_ok=True)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    with pytest.raises(error, match=match) as e:
        extract_archive(archive, dest, **limits)
    after = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before
    return e.value


def test_unsafe_archive_error_is_in_the_family():
    assert issubclass(UnsafeArchiveError, UnsafeFileError) and issubclass(UnsafeArchiveError, FileFormatError)


def test_hard_link_to_a_symlink_cannot_open_a_way_out(tmp_path, filter_mode):
    """a/s -> .. is dest itself; link() does not follow symlinks, so a hard link h -> a/s
    would be a second symlink '..', now one level higher: dest's parent."""
    archive = _tar(tmp_path / "escape.tar.gz", [("a", tarfile.DIRTYPE, ""), ("a/s", tarfile.SYMTYPE, ".."),
                                                ("h", tarfile.LNKTYPE, "a/s"), ("h/outside/x", b"pwned")])
    err = _refused(tmp_path, archive, tmp_path / "dest", UnsafeArchiveError,
                   r"hard link 'h' -> 'a/s' refused: its target is a symlink")
    assert err.path == archive
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("members, match", [
    ([("f", b"x"), ("h1", tarfile.LNKTYPE, "f"), ("h2", tarfile.LNKTYPE, "h1")], r"'h2' -> 'h1'.*a hard link"),
    ([("d", tarfile.DIRTYPE, ""), ("h", tarfile.LNKTYPE, "d")], r"'h' -> 'd'.*a directory"),
    ([("h", tarfile.LNKTYPE, "elsewhere.txt")], r"'h' -> 'elsewhere.txt'.*no earlier regular file"),
    ([("h", tarfile.LNKTYPE, "later.txt"), ("later.txt", b"x")], r"'h' -> 'later.txt'.*no earlier regular file"),
    ([("f", b"x"), ("h", tarfile.LNKTYPE, "./d/../f/")], r"'h' -> './d/\.\./f/'.*no earlier regular file"),
], ids=["to-hard-link", "to-directory", "to-no-member", "to-later-member", "to-odd-spelling"])
def test_hard_links_must_name_an_earlier_regular_file(tmp_path, filter_mode, members, match):
    archive = _tar(tmp_path / "bad.tar.gz", [("innocent.txt", b"ok")] + members)
    _refused(tmp_path, archive, tmp_path / "dest", UnsafeArchiveError, match)


def test_hard_link_to_an_existing_file_in_dest_is_refused(tmp_path, filter_mode):
    """The target must come from the archive: linking to whatever dest holds (perhaps itself
    a hard link to a file elsewhere) would let later members write into it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("precious")
    archive = _tar(tmp_path / "bad.tar.gz", [("h", tarfile.LNKTYPE, "mine.txt"), ("h", b"overwrite")])
    _refused(tmp_path, archive, dest, UnsafeArchiveError, r"'h' -> 'mine.txt'")
    assert (dest / "mine.txt").read_text() == "precious"


def test_failure_midway_leaves_nothing(tmp_path, filter_mode, monkeypatch):
    """An error after some members were written (here: the disk fills up on the second file)
    leaves dest as it was: members go to a temporary folder first."""
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "old.txt").write_text("kept")
    archive = _tar(tmp_path / "ok.tar.gz", [("top/a.txt", b"1"), ("top/b.txt", b"2"), ("c.txt", b"3")])
    real = tarfile.TarFile.makefile
    calls = []

    def disk_fills_up(self, tarinfo, targetpath):
        calls.append(tarinfo.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", disk_fills_up)
    _refused(tmp_path, archive, dest, OSError, "No space left")
    assert calls == ["top/a.txt", "top/b.txt"]


def test_extraction_merges_into_an_existing_dest(tmp_path, filter_mode):
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "old.txt").write_text("kept")
    (dest / "top" / "a.txt").write_text("replaced")
    archive = _tar(tmp_path / "ok.tar.gz", [("top", tarfile.DIRTYPE, ""), ("top/a.txt", b"new"),
                                            ("top/sub/b.txt", b"b"), ("c.txt", b"c"),
                                            ("top/h", tarfile.LNKTYPE, "top/a.txt")])
    assert extract_archive(archive, dest) == dest
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "c.txt", "top", "top/a.txt", "top/h", "top/old.txt", "top/sub", "top/sub/b.txt"]
    assert (dest / "top" / "a.txt").read_bytes() == b"new" and (dest / "top" / "h").read_bytes() == b"new"
    assert (dest / "top" / "old.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "ok.tar.gz"]


def test_tar_bomb_is_bounded_by_max_bytes(tmp_path, filter_mode):
    archive = _tar(tmp_path / "bomb.tar.gz", [("zeros", bytes(12 << 20))])
    assert archive.stat().st_size < 1 << 20
    err = _refused(tmp_path, archive, tmp_path / "dest", LimitExceededError,
                   r"12582912 bytes.*max_bytes=4194304", max_bytes=4 << 20)
    assert err.path == archive
    assert not any((tmp_path / "dest").iterdir())
    extract_archive(archive, tmp_path / "dest", max_bytes=16 << 20)
    assert (tmp_path / "dest" / "zeros").stat().st_size == 12 << 20


def test_tar_bomb_default_bound(tmp_path, monkeypatch):
    import minicnn.data.archive as archive_module
    monkeypatch.setattr(archive_module, "MAX_BYTES", 1 << 20)
    archive = _tar(tmp_path / "bomb.tar.gz", [("zeros", bytes(2 << 20))])
    _refused(tmp_path, archive, tmp_path / "dest", LimitExceededError, "max_bytes")


def test_member_count_is_bounded(tmp_path, filter_mode):
    archive = _tar(tmp_path / "many.tar", [(f"f{i}", b"") for i in range(50)], mode="w")
    _refused(tmp_path, archive, tmp_path / "dest", LimitExceededError, r"more than 20 members.*max_members",
             max_members=20)
    extract_archive(archive, tmp_path / "dest", max_members=50)
    assert len(list((tmp_path / "dest").iterdir())) == 50


def test_zip_bomb_and_member_count_are_bounded(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", bytes(12 << 20))
        for i in range(30):
            zf.writestr(f"f{i}", b"")
    _refused(tmp_path, archive, tmp_path / "dest", LimitExceededError, r"max_bytes", max_bytes=4 << 20)
    _refused(tmp_path, archive, tmp_path / "dest", LimitExceededError, r"max_members", max_members=20)
    extract_archive(archive, tmp_path / "dest", max_bytes=16 << 20)
    assert (tmp_path / "dest" / "zeros").stat().st_size == 12 << 20


def test_corrupt_archives_are_file_format_errors(tmp_path, filter_mode):
    good = _tar(tmp_path / "good.tar.gz", [("a", bytes(range(256)) * 400), ("b", b"x" * 1000)])
    raw = good.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    _refused(tmp_path, tmp_path / "cut.tar.gz", tmp_path / "dest", FileFormatError, r"cut\.tar\.gz")
    (tmp_path / "plain.bin").write_bytes(b"this is not an archive")
    _refused(tmp_path, tmp_path / "plain.bin", tmp_path / "dest", FileFormatError,
             r"plain\.bin.*neither a tar nor a zip")
    zraw = io.BytesIO()
    with zipfile.ZipFile(zraw, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a", bytes(range(256)) * 400)
    flipped = bytearray(zraw.getvalue())
    flipped[100] ^= 0xFF
    (tmp_path / "flip.zip").write_bytes(bytes(flipped))
    _refused(tmp_path, tmp_path / "flip.zip", tmp_path / "dest", FileFormatError, r"flip\.zip")
