"""Safe extraction of ``.tar``, ``.tar.gz``/``.tgz`` and ``.zip`` archives.

An archive from the network is untrusted: a member named ``../../.bashrc`` or
``/etc/passwd``, a symlink pointing outside, or a path that goes *through* a
symlink the archive itself just made (``d/l -> ..`` then ``d/l/../x``) would
write where it should not (CVE-2007-4559).  :func:`extract_archive` checks every
member *before* writing anything and refuses the whole archive if one breaks
the rule below; device files and FIFOs are refused too.  Tar extraction also
runs under Python's ``'data'`` filter where available, as a second line, but the
check is sound without it (the filter is missing from older 3.10/3.11 releases).

The rule, for member names and for link targets alike: walked component by
component (a symlink's target from the link's directory, a hard link's from
``dest``), the path must not be absolute, must not climb above ``dest``, and
must not continue *past* a symlink, whether a symlink member of the archive or
one already in ``dest``; if it ends on a link already in ``dest``, that link
must resolve inside.  So no path is followed through a link midway, ``..`` is
always the lexical parent, every link points inside, and a chain of links
cannot lead out either.  The archive's symlinks are matched case- and
Unicode-insensitively, as macOS and Windows filesystems match names.

A hard link is resolved against the archive's own members: its target must be
spelled exactly as an earlier member that is a regular file and still one at
that point (``link()`` does not follow symlinks, so a hard link to a symlink
``a/s -> ..`` would be a new symlink ``..`` one level higher, and a hard link to
a file already in ``dest`` could lead anywhere that file is linked).

Members are extracted into a temporary folder inside ``dest`` and moved into
place only when all of them were written, so a refused or failed archive
leaves ``dest`` as it was.  Bombs are bounded before anything is written: at
most ``max_members`` members holding at most ``max_bytes`` bytes (as their
headers declare; the readers never produce more than declared).
"""
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import FileFormatError, LimitExceededError, UnsafeFileError

MAX_BYTES = 8 << 30       # default bound on the bytes an archive may extract
MAX_MEMBERS = 1_000_000   # and on its number of members
_MAX_ZIP_LINK = 4096      # a zip symlink's target is read into memory: keep it a path's size

# What a corrupt archive raises inside tarfile, zipfile and their decompressors.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile,
            NotImplementedError, RuntimeError, UnicodeDecodeError)

_FILTER_ERROR = getattr(tarfile, "FilterError", ())   # absent from releases without the data filter


class UnsafeArchiveError(UnsafeFileError):
    """An archive member would be written, or would point, outside the destination."""


def _key(path):
    """``path`` as a case- and Unicode-insensitive filesystem sees it, for matching symlinks."""
    return unicodedata.normalize("NFC", posixpath.normpath(path.replace("\\", "/")).casefold())


def _resolve(dest, base, relative, symlinks):
    """The components (below ``dest``) where ``relative``, followed from the directory ``base``, lands.

    Returns ``(parts, None)``, or ``(None, reason)`` if the path breaks the module's rule;
    ``symlinks`` holds the :func:`_key` of every symlink member.
    """
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or (rel.parts and rel.parts[0].endswith(":")):
        return None, f"is absolute, outside {dest}"
    parts = list(base)
    for part in rel.parts:
        here = "/".join(parts) or "."
        if _key(here) in symlinks or os.path.islink(os.path.join(dest, *parts)):
            return None, f"passes through the symlink {here!r}"
        if part != "..":
            parts.append(part)
        elif parts:
            parts.pop()
        else:
            return None, f"climbs outside {dest}"
    real = os.path.realpath(os.path.join(dest, *parts))
    if real != dest and not real.startswith(dest + os.sep):
        return None, f"ends on a link already in {dest} that leads outside"
    return parts, None


def _check(members, dest, archive):
    """Refuse the archive unless every member obeys the module's rule.

    ``members``: ``(name, kind, target)`` with kind ``'file'`` (regular file), ``'directory'``,
    ``'symlink'``, ``'hard link'`` or ``'other'`` (device/FIFO); ``target`` is a link's
    target, else None.
    """
    symlinks = {_key(name) for name, kind, _ in members if kind == "symlink"}
    files, latest = set(), {}   # names of regular files so far; the latest kind under each key
    for name, kind, target in members:
        parts, reason = _resolve(dest, (), name, symlinks)
        if reason:
            raise UnsafeArchiveError(f"member {name!r} refused: its path {reason}", archive)
        if kind == "other":
            raise UnsafeArchiveError(f"member {name!r} refused: it is a device or FIFO", archive)
        if target is not None:
            # A symlink's target is relative to the link's directory, a hard link's to dest.
            base = parts[:-1] if kind == "symlink" else ()
            _, reason = _resolve(dest, base, target, symlinks)
            if reason:
                raise UnsafeArchiveError(f"{kind} {name!r} -> {target!r} refused: its target {reason}", archive)
        if kind == "hard link":
            now = latest.get(_key(target))
            if now not in (None, "file"):
                raise UnsafeArchiveError(f"hard link {name!r} -> {target!r} refused: its target is a {now}", archive)
            if target not in files or now is None:
                raise UnsafeArchiveError(f"hard link {name!r} -> {target!r} refused: its target names no "
                                         "earlier regular file of the archive", archive)
        latest[_key(name)] = kind
        if kind == "file":
            files.add(name)
        else:
            files.discard(name)


def _limit(archive, members, total, max_bytes, max_members):
    """Refuse an archive of more than ``max_members`` members or ``max_bytes`` bytes."""
    if members > max_members:
        raise LimitExceededError(f"more than {max_members} members (max_members={max_members}); "
                                 "pass a larger max_members= to extract it", archive)
    if total > max_bytes:
        raise LimitExceededError(f"its members hold {total} bytes, more than max_bytes={max_bytes}; "
                                 "pass a larger max_bytes= to extract it", archive)


def _tar_members(tar, archive, max_members):
    """The TarInfos of ``tar``, read lazily so a flood of headers stops at ``max_members``."""
    infos = []
    for info in tar:
        infos.append(info)
        _limit(archive, len(infos), 0, 0, max_members)
    return infos


def _tar_kind(m):
    if m.issym():
        return m.name, "symlink", m.linkname
    if m.islnk():
        return m.name, "hard link", m.linkname
    return m.name, "file" if m.isfile() else "directory" if m.isdir() else "other", None


def _zip_members(zf, archive):
    # zipfile writes a link entry as a plain file holding the target; check it as a
    # symlink anyway, so both formats follow one rule.
    out = []
    for info in zf.infolist():
        if not stat.S_ISLNK(info.external_attr >> 16):
            out.append((info.filename, "directory" if info.is_dir() else "file", None))
        elif info.file_size > _MAX_ZIP_LINK:
            raise UnsafeArchiveError(f"symlink {info.filename!r} refused: a target of {info.file_size} bytes", archive)
        else:
            out.append((info.filename, "symlink", zf.read(info).decode("utf-8", "replace")))
    return out


def _extract_zip(path, real_dest, tmp, max_bytes, max_members):
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        _limit(path, len(infos), sum(i.file_size for i in infos), max_bytes, max_members)
        _check(_zip_members(zf, path), real_dest, path)
        zf.extractall(tmp)


def _extract_tar(path, real_dest, tmp, max_bytes, max_members):
    with tarfile.open(path) as tar:
        infos = _tar_members(tar, path, max_members)
        _limit(path, len(infos), sum(m.size for m in infos if m.isfile()), max_bytes, max_members)
        _check([_tar_kind(m) for m in infos], real_dest, path)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, members=infos, filter="data")
        else:
            tar.extractall(tmp, members=infos)


def _moves(src, dst, archive, out):
    """(from, to) renames that merge the tree ``src`` into ``dst`` as extracting over it would:
    directories merge, anything else replaces; a directory never replaces a non-directory
    or the other way round (nor is a symlink in ``dst`` followed)."""
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        target_is_dir = os.path.isdir(target) and not os.path.islink(target)
        if entry.is_dir(follow_symlinks=False) and target_is_dir:
            _moves(entry.path, target, archive, out)
        elif target_is_dir or entry.is_dir(follow_symlinks=False) and os.path.lexists(target):
            raise FileExistsError(f"{archive}: cannot extract {entry.name!r} over {target} "
                                  "(a directory and a non-directory)")
        else:
            out.append((entry.path, target))
    return out


def extract_archive(path, dest, max_bytes=None, max_members=None):
    """Extract ``path`` (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip) into ``dest``; returns ``dest``.

    All or nothing: members are written to a temporary folder in ``dest`` and merged
    into ``dest`` only when every one was written.  Raises, leaving ``dest`` as it was:

    - :class:`UnsafeArchiveError` (a :class:`~minicnn.errors.UnsafeFileError`), naming the
      member and the reason, if a member's path or a link's target is absolute, climbs out
      of ``dest``, passes through a symlink (the archive's or one already in ``dest``) or
      ends on a link in ``dest`` leading outside, if a hard link names anything but an
      earlier regular-file member, or if a member is a device/FIFO;
    - :class:`~minicnn.errors.LimitExceededError` for more than ``max_members`` members
      (default :data:`MAX_MEMBERS`) or more than ``max_bytes`` bytes (default :data:`MAX_BYTES`);
    - :class:`~minicnn.errors.FileFormatError` for a file that is neither tar nor zip, or
      is truncated or corrupt;
    - ``OSError`` for the file system's own failures (disk full, permissions).
    """
    path = Path(path)
    dest = Path(dest)
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    max_members = MAX_MEMBERS if max_members is None else max_members
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    if zipfile.is_zipfile(path):
        extract = _extract_zip
    elif tarfile.is_tarfile(path):
        extract = _extract_tar
    else:
        raise FileFormatError("neither a tar nor a zip archive", path)
    tmp = tempfile.mkdtemp(prefix=".extracting-", dir=real_dest)
    try:
        try:
            extract(path, real_dest, tmp, max_bytes, max_members)
        except _FILTER_ERROR as e:
            raise UnsafeArchiveError(f"refused by tarfile's data filter: {e}", path) from e
        except _CORRUPT as e:
            raise FileFormatError(f"truncated or corrupt archive ({type(e).__name__}: {e})", path) from e
        for src, target in _moves(tmp, real_dest, path, []):
            os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
