"""The errors minicnn raises for bad files and bad input.

Every reader of untrusted bytes (``load_torch``, checkpoints, archives,
datasets, images) fails with a :class:`FileFormatError` (a ``ValueError``) or
an ``OSError`` for the file system itself, never with whatever the parser
happened to trip over.  The message names the file and what was wrong.

* :class:`FileFormatError` - the file is malformed, truncated, or not what it
  claims to be; ``.path`` holds the file.
* :class:`UnsafeFileError` - the file asks for something refused on purpose
  (a pickle global that is not tensor data, an archive member that escapes).
* :class:`LimitExceededError` - reading it would take more memory than its
  budget (derived from the file's size, or the caller's ``max_bytes``/``max_pixels``).
"""

__all__ = ["FileFormatError", "UnsafeFileError", "LimitExceededError"]


class FileFormatError(ValueError):
    """A file cannot be read: malformed, truncated, or not of the expected kind."""

    def __init__(self, message, path=None):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


class UnsafeFileError(FileFormatError):
    """A file was refused because it asks for something unsafe."""


class LimitExceededError(FileFormatError):
    """Reading a file would exceed its memory budget."""
