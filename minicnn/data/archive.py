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
"""
import os
import posixpath
import stat
import tarfile
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
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

    ``members``: ``(name, kind, target)`` with kind ``'file'`` (regular file or directory),
    ``'symlink'``, ``'hard link'`` or ``'other'`` (device/FIFO); ``target`` is a link's
    target, else None.
    """
    symlinks = {_key(name) for name, kind, _ in members if kind == "symlink"}
    for name, kind, target in members:
        parts, reason = _resolve(dest, (), name, symlinks)
        if reason:
            raise UnsafeArchiveError(f"{archive}: member {name!r} refused: its path {reason}")
        if kind == "other":
            raise UnsafeArchiveError(f"{archive}: member {name!r} refused: it is a device or FIFO")
        if target is not None:
            # A symlink's target is relative to the link's directory, a hard link's to dest.
            base = parts[:-1] if kind == "symlink" else ()
            _, reason = _resolve(dest, base, target, symlinks)
            if reason:
                raise UnsafeArchiveError(
                    f"{archive}: {kind} {name!r} -> {target!r} refused: its target {reason}")


def _tar_members(tar):
    return [(m.name, "symlink", m.linkname) if m.issym() else
            (m.name, "hard link", m.linkname) if m.islnk() else
            (m.name, "file" if m.isfile() or m.isdir() else "other", None)
            for m in tar.getmembers()]


def _zip_members(zf):
    # zipfile writes a link entry as a plain file holding the target; check it as a
    # symlink anyway, so both formats follow one rule.
    return [(info.filename, "symlink", zf.read(info).decode("utf-8", "replace"))
            if stat.S_ISLNK(info.external_attr >> 16) else (info.filename, "file", None)
            for info in zf.infolist()]


def extract_archive(path, dest):
    """Extract ``path`` (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip) into ``dest``; returns ``dest``.

    Raises :class:`UnsafeArchiveError` (a ValueError), naming the member and the reason,
    without writing anything if a member's path or a link's target is absolute, climbs
    out of ``dest``, passes through a symlink (the archive's or one already in ``dest``)
    or ends on a link in ``dest`` leading outside, or if a member is a device/FIFO;
    ValueError for a file that is neither tar nor zip.
    """
    path = Path(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _check(_zip_members(zf), real_dest, path)
            zf.extractall(real_dest)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            _check(_tar_members(tar), real_dest, path)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(real_dest, filter="data")
            else:
                tar.extractall(real_dest)
    else:
        raise ValueError(f"{path} is neither a tar nor a zip archive")
    return dest
