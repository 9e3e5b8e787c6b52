"""Where dataset files live, how they are checked, and how they are fetched.

``data_root(root)`` resolves the cache directory: the ``root`` argument, else
``$MINICNN_DATA``, else ``~/.cache/minicnn``.

``download(urls, dest, md5)`` streams the first URL that answers into a temp
file beside ``dest`` while hashing it, checks the md5, and only then moves it
into place with ``os.replace`` (atomic on one filesystem).  A URL that fails
or whose bytes do not match is followed by the next (the mirrors); if none
succeeds nothing is left behind and a :class:`DownloadError` says what each
URL did and how to proceed offline.  ``file://`` URLs work as well.  A server
cannot fill the disk: more than ``max_bytes`` (default :data:`MAX_BYTES`), announced
or streamed, is refused.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

_CHUNK = 1 << 20
MAX_BYTES = 8 << 30   # default bound on one download


class DownloadError(OSError):
    """No URL gave a file with the expected checksum."""


def data_root(root=None):
    """The dataset cache directory: ``root``, else ``$MINICNN_DATA``, else ``~/.cache/minicnn``.

    The directory is not created here; downloads create it when they need it.
    """
    if root is None:
        root = os.environ.get("MINICNN_DATA") or Path.home() / ".cache" / "minicnn"
    return Path(root).expanduser()


def md5_bytes(data):
    """Hex md5 of a bytes object."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path):
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url, tmp, md5, timeout, max_bytes):
    """Stream ``url`` into the open file ``tmp``; raise if the bytes are incomplete, wrong,
    or more than ``max_bytes``."""
    h = hashlib.md5(usedforsecurity=False)
    size = 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) > max_bytes:
            raise DownloadError(f"the server announced {expected} bytes, more than max_bytes={max_bytes}")
        while chunk := response.read(min(_CHUNK, max_bytes + 1 - size)):
            tmp.write(chunk)
            h.update(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise DownloadError(f"the server sent more than max_bytes={max_bytes}")
    if expected is not None and size != int(expected):
        raise DownloadError(f"got {size} bytes, the server announced {expected}")
    if md5 is not None and h.hexdigest() != md5:
        raise DownloadError(f"md5 {h.hexdigest()} does not match the expected {md5}")


def download(urls, dest, md5, *, offline_hint="", timeout=30.0, quiet=False, max_bytes=MAX_BYTES):
    """Fetch ``dest`` from the first of ``urls`` whose bytes have md5 ``md5``; returns ``dest``.

    ``urls`` is a URL or a list of them (official first, then mirrors).  ``md5`` may be
    None only for files without a published checksum; the Content-Length is checked
    either way, and more than ``max_bytes`` is refused.  On failure raises
    :class:`DownloadError` listing every URL's error, followed by ``offline_hint``;
    no partial file is left in ``dest``'s directory.
    """
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ValueError("download needs at least one URL")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            if not quiet:
                print(f"minicnn: downloading {url} -> {dest}", file=sys.stderr)
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f, md5, timeout, max_bytes)
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as e:
            # ValueError: urllib's answer to a malformed URL.
            errors.append(f"  {url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    msg = f"could not download {dest.name}:\n" + "\n".join(errors)
    raise DownloadError(msg + (f"\n{offline_hint}" if offline_hint else ""))
