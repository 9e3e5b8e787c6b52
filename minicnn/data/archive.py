"""Safe extraction of ``.tar``, ``.tar.gz``/``.tgz`` and ``.zip`` archives.

An archive from the network is untrusted: a member named ``../../.bashrc`` or
``/etc/passwd``, or a symlink pointing outside, would write where it should
not (CVE-2007-4559).  :func:`extract_archive` checks every member *before*
writing anything and refuses the whole archive if one would land outside
``dest``; device files and FIFOs are refused too.  Tar extraction also runs
under Python's ``'data'`` filter where available, as a second line.
"""
import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """An archive member would be written, or would point, outside the destination."""


def _inside(dest, relative):
    """True if ``dest/relative`` (normalized, without following links) stays inside ``dest``."""
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or (rel.parts and rel.parts[0].endswith(":")):
        return False
    target = os.path.normpath(os.path.join(dest, *rel.parts))
    return target == dest or target.startswith(dest + os.sep)


def _check_tar(tar, dest, archive):
    for m in tar.getmembers():
        if not _inside(dest, m.name):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} would be written outside {dest}")
        if m.issym():
            # A symlink's target is relative to the directory holding the link.
            parent = str(PurePosixPath(m.name).parent)
            if m.linkname.startswith("/") or not _inside(dest, os.path.join(parent, m.linkname)):
                raise UnsafeArchiveError(
                    f"{archive}: symlink {m.name!r} -> {m.linkname!r} points outside {dest}")
        elif m.islnk():
            # A hard link's target is a member name, relative to the archive root.
            if not _inside(dest, m.linkname):
                raise UnsafeArchiveError(
                    f"{archive}: hard link {m.name!r} -> {m.linkname!r} points outside {dest}")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or FIFO")


def _check_zip(zf, dest, archive):
    for info in zf.infolist():
        if not _inside(dest, info.filename):
            raise UnsafeArchiveError(
                f"{archive}: member {info.filename!r} would be written outside {dest}")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            # zipfile writes a link entry as a plain file holding the target; refuse
            # the outside ones anyway, so both formats follow one rule.
            target = zf.read(info).decode("utf-8", "replace")
            parent = str(PurePosixPath(info.filename).parent)
            if target.startswith("/") or not _inside(dest, os.path.join(parent, target)):
                raise UnsafeArchiveError(
                    f"{archive}: symlink {info.filename!r} -> {target!r} points outside {dest}")


def extract_archive(path, dest):
    """Extract ``path`` (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip) into ``dest``; returns ``dest``.

    Raises :class:`UnsafeArchiveError` (a ValueError) without writing anything if a
    member's path is absolute or climbs out of ``dest``, if a link points outside,
    or if a member is a device/FIFO; ValueError for a file that is neither tar nor zip.
    """
    path = Path(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _check_zip(zf, real_dest, path)
            zf.extractall(real_dest)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            _check_tar(tar, real_dest, path)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(real_dest, filter="data")
            else:
                tar.extractall(real_dest)
    else:
        raise ValueError(f"{path} is neither a tar nor a zip archive")
    return dest
