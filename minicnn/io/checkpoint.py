"""Checkpoints: model weights or a whole training state in one ``.npz``, never pickled.

A checkpoint is a nested tree (dicts, lists, tuples, numbers, strings, None
and ndarrays).  Saving splits it into its arrays, each an ``.npz`` member named
by its path in the tree (``model/0.weight``, ``optimizer/state/3/exp_avg``),
and everything else, kept as JSON in the member ``__meta__`` with
``{"__array__": path}`` where an array was.  ``np.load(allow_pickle=False)``
reads it back, so loading a file runs no code from it.  Dict keys must be
strings or ints; ints come back as strings (the optimizer accepts both).

Writes are atomic: the file is written to a temporary name in the same
directory (``.<name>.XXXXXXXX.tmp``, locked while written), flushed to disk
(fsync), then moved over the destination with ``os.replace``.  A crash
mid-write leaves the previous checkpoint untouched; the orphaned temporary is
removed by the next save or load of that checkpoint (only unlocked files of
exactly that name pattern: never a temporary another process is writing).

Two kinds of file:

- **model** (:func:`save_model` / :func:`load_model`): the state dict plus
  free metadata (epoch, metrics, class names...).
- **training** (:func:`save_training_state` / :func:`load_training_state`):
  model, optimizer, scheduler, epoch, the global RNG state
  (:func:`minicnn.random.get_state`) and anything else given (loader states,
  history, callback states), everything needed to resume a run exactly.

Loading is all or nothing.  Reading a file allocates no more than its arrays
as the zip declares them, at most ``max_bytes`` (default: 4x the file's size;
``np.savez`` stores arrays uncompressed, so a checkpoint minicnn wrote needs
1x); every metadata field and every array (shape, dtype, finite values) is
checked against the model, optimizer, scheduler and RNG before any of them
changes.  Anything wrong raises :class:`CheckpointError` (a
:class:`~minicnn.errors.FileFormatError`, so a ``ValueError``) naming the file
and the field; past the memory bound, :class:`~minicnn.errors.LimitExceededError`.
"""
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import random as mrandom
from ..errors import FileFormatError, LimitExceededError

try:
    import fcntl
except ImportError:  # Windows: a file open for writing cannot be deleted, which is lock enough
    fcntl = None

FORMAT = "minicnn-checkpoint"
VERSION = 1
_META = "__meta__"
EXPANSION = 4          # default bound on the bytes read, as a multiple of the file's size
_MAX_DEPTH = 100       # metadata nesting; minicnn's own trees are a few levels deep
_CHUNK = 1 << 18       # bytes read at a time (numpy's own read_array uses the same)
_TEMP_TAIL = re.compile(r"[a-z0-9_]{8}\.tmp")   # tempfile.mkstemp's 8 random characters


class CheckpointError(FileFormatError):
    """A checkpoint file that cannot be read, or does not fit what it is loaded into."""


# ------------------------------------------------------------------ tree <-> npz
def _encode(obj, path, arrays):
    """JSON-able mirror of ``obj``; its ndarrays go to ``arrays[path]``."""
    if isinstance(obj, np.ndarray):
        arrays[path] = obj
        return {"__array__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, np.integer)) or isinstance(k, bool):
                raise TypeError(f"checkpoint dict keys must be str or int, got {k!r} at {path or '/'}")
            out[str(k)] = _encode(v, f"{path}/{k}" if path else str(k), arrays)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    raise TypeError(f"cannot store {type(obj).__name__} at {path or '/'} in a checkpoint: only "
                    "dicts, lists, tuples, numbers, strings, None and ndarrays are allowed")


def _decode(obj, arrays, depth=0):
    """The tree ``obj`` (JSON) describes; ValueError for a malformed one."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"metadata is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, list):
        return [_decode(v, arrays, depth + 1) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            name = obj["__array__"]
            if len(obj) != 1 or not isinstance(name, str) or name not in arrays:
                raise ValueError(f"metadata entry {obj!r:.80} names no array of the file ('__array__')")
            return arrays[name]
        if "__tuple__" in obj:
            if len(obj) != 1 or not isinstance(obj["__tuple__"], list):
                raise ValueError(f"metadata entry {obj!r:.80} is not a list marked '__tuple__'")
            return tuple(_decode(v, arrays, depth + 1) for v in obj["__tuple__"])
        return {k: _decode(v, arrays, depth + 1) for k, v in obj.items()}
    return obj


def save_state(path, tree, kind="state"):
    """Write the nested ``tree`` to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    arrays = {}
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "tree": _encode(tree, "", arrays)}
    if _META in arrays:
        raise ValueError(f"{_META!r} is reserved and cannot name an array")
    members = dict(arrays)
    members[_META] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    fd, tmp = _locked_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:
                os.replace(tmp, path)   # while locked: a cleaner cannot take the finished file first
        if fcntl is None:
            os.replace(tmp, path)   # Windows renames only closed files
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _locked_temp(path):
    """A new temporary file beside ``path``, open and locked against :func:`remove_orphans`."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)   # a cleaner removed it between its creation and our lock


def remove_orphans(path):
    """Delete the temporaries that interrupted saves of ``path`` left behind.

    Only files named as :func:`save_state` names its own (``.<name>.XXXXXXXX.tmp``)
    and not locked by a save still running; returns the paths removed.
    """
    path = Path(path)
    prefix = f".{path.name}."
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)
                 and _TEMP_TAIL.fullmatch(e.name[len(prefix):]) and e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    removed = []
    for name in names:
        tmp = path.parent / name
        try:
            if fcntl is None:
                tmp.unlink()
            else:
                fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held: a save is writing it
                    tmp.unlink()
                finally:
                    os.close(fd)
        except OSError:
            continue
        removed.append(tmp)
    return removed


def _fsync_dir(folder):
    """Make the rename itself durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_arrays(path, max_bytes):
    """Every member of the .npz at ``path``.  Their sizes as the zip declares them must add
    up to at most ``max_bytes``, and each member's .npy header must ask for exactly its
    declared bytes before its array is allocated."""
    budget = EXPANSION * path.stat().st_size if max_bytes is None else max_bytes
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > budget:
            allowed = "max_bytes" if max_bytes is not None else f"{EXPANSION}x the file's size"
            raise LimitExceededError(f"its arrays take {total} bytes, more than the {budget} allowed "
                                     f"({allowed}); pass a larger max_bytes= to read it", path)
        arrays = {}
        for info in infos:
            with zf.open(info) as f:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                arrays[name] = _read_member(f, info)
    return arrays


def _read_member(f, info):
    """The array of the .npy member ``f``, read in chunks straight into its buffer
    (reading every byte checks the member's CRC)."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"member {info.filename!r} has .npy version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes != info.file_size - f.tell():
        raise ValueError(f"member {info.filename!r}: its header asks for {nbytes} bytes, "
                         f"the zip holds {info.file_size - f.tell()}")
    array = np.empty(count, dtype)
    raw = array.view(np.uint8) if nbytes else np.empty(0, np.uint8)
    done = 0
    while done < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - done))
        if not chunk:
            raise ValueError(f"member {info.filename!r} ends after {done} of {nbytes} bytes")
        raw[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def load_state(path, kind=None, max_bytes=None):
    """Read a tree written by :func:`save_state`; ``kind`` (if given) must match the file's.

    ``max_bytes`` bounds the memory its arrays may take (default: 4x the file's size).
    Orphaned temporaries of ``path`` (:func:`remove_orphans`) are removed first.
    """
    path = Path(path)
    remove_orphans(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        arrays = _read_arrays(path, max_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError) as e:   # RuntimeError: an encrypted member
        if isinstance(e, FileFormatError):
            raise
        raise CheckpointError(f"truncated or corrupt, cannot be read ({type(e).__name__}: {e})", path) from e
    if _META not in arrays:
        raise CheckpointError(f"an .npz but not a minicnn checkpoint (no {_META!r} entry)", path)
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except RecursionError as e:
        raise CheckpointError("corrupt metadata (nested too deeply)", path) from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt metadata ({e})", path) from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt metadata: the metadata is a {type(meta).__name__}, expected a dict", path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a minicnn checkpoint (format {meta.get('format')!r:.80})", path)
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"metadata field 'version' must be an int, got {version!r:.80}", path)
    if version > VERSION:
        raise CheckpointError(f"format version {version}; this minicnn reads up to {VERSION} "
                              "(upgrade minicnn)", path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"holds a {meta.get('kind')!r:.80} state, expected a {kind!r} one", path)
    if "tree" not in meta:
        raise CheckpointError("metadata has no 'tree'", path)
    try:
        return _decode(meta["tree"], arrays)
    except ValueError as e:
        raise CheckpointError(str(e), path) from e


def _fields(path, tree, types):
    """``tree``, after checking it is a dict whose fields ``types`` names have those types."""
    if not isinstance(tree, dict):
        raise CheckpointError(f"the checkpoint holds a {type(tree).__name__}, expected a dict of fields", path)
    for name, want in types.items():
        if name not in tree:
            raise CheckpointError(f"field {name!r} is missing", path)
        if not isinstance(tree[name], want) or isinstance(tree[name], bool):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise CheckpointError(f"field {name!r} must be a {names}, got a {type(tree[name]).__name__}", path)
    return tree


# ---------------------------------------------------------------------- models
def _architecture_problems(model, weights):
    """Human-readable differences between a model's state and saved weights."""
    have = model.state_dict()
    problems = [f"  {k}: saved shape {tuple(np.shape(weights[k]))}, model has {tuple(v.shape)}"
                for k, v in have.items() if k in weights and np.shape(weights[k]) != v.shape]
    missing = [k for k in have if k not in weights]
    unexpected = [k for k in weights if k not in have]
    if missing:
        problems.append("  missing from the checkpoint: " + ", ".join(missing))
    if unexpected:
        problems.append("  not in the model: " + ", ".join(unexpected))
    return problems, bool(missing or unexpected)


def _check_weights(path, model, weights, saved_class, strict):
    problems, key_mismatch = _architecture_problems(model, weights)
    shape_problems = [p for p in problems if ": saved shape" in p]
    if shape_problems or (strict and key_mismatch):
        raise CheckpointError(
            f"saved from a {saved_class} whose weights do not fit this "
            f"{type(model).__name__} (another architecture?):\n" + "\n".join(problems), path)


def _load_weights(path, model, weights, strict):
    """``model.load_state_dict``, which checks every array before it changes any."""
    try:
        model.load_state_dict(weights, strict=strict)
    except ValueError as e:
        raise CheckpointError(f"model weights do not fit: {e}", path) from e


def save_model(path, model, metadata=None):
    """Save ``model``'s state dict (and a dict of ``metadata``) to ``path`` atomically."""
    return save_state(path, {"architecture": type(model).__name__, "model": model.state_dict(),
                             "metadata": dict(metadata or {})}, kind="model")


def load_model(path, model, strict=True, max_bytes=None):
    """Load weights saved by :func:`save_model` (or a training state) into ``model``.

    Returns the saved metadata dict.  Raises :class:`CheckpointError`, with the
    model unchanged, if the weights' names or shapes do not fit (any shape
    mismatch; with ``strict``, also missing or extra names), or an array is not
    real, finite, or convertible to its weight's dtype.  ``max_bytes``: see
    :func:`load_state`.
    """
    tree = _fields(path, load_state(path, max_bytes=max_bytes), {"model": dict})
    tree = _fields(path, tree, {"architecture": str}) if "architecture" in tree else tree
    metadata = _fields(path, tree, {"metadata": dict})["metadata"] if "metadata" in tree else {}
    _check_weights(path, model, tree["model"], tree.get("architecture", "model"), strict)
    _load_weights(path, model, tree["model"], strict)
    return metadata


# ------------------------------------------------------------- training state
def save_training_state(path, model, optimizer, scheduler=None, epoch=0, **extra):
    """Save everything needed to resume: model, optimizer, scheduler, ``epoch`` (completed
    epochs), the global RNG state and any ``extra`` trees (loader states, history...)."""
    tree = {"architecture": type(model).__name__, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "epoch": int(epoch), "rng": mrandom.get_state(), "extra": extra}
    return save_state(path, tree, kind="training")


def load_training_state(path, model, optimizer, scheduler=None, check_extra=None, max_bytes=None):
    """Restore model, optimizer, scheduler and the global RNG from ``path``.

    Returns ``{'epoch': int, **extra}`` with the extra trees given to
    :func:`save_training_state`.  All or nothing: every field is checked first
    (the weights against the model, the optimizer state against its parameters,
    the scheduler state, the RNG state, and ``check_extra(result)`` if given,
    which may raise ValueError for the caller's own trees); on any error a
    :class:`CheckpointError` names the file and the field, and nothing has changed.
    """
    tree = _fields(path, load_state(path, kind="training", max_bytes=max_bytes),
                   {"architecture": str, "model": dict, "optimizer": dict, "scheduler": (dict, type(None)),
                    "epoch": int, "rng": (str, dict), "extra": dict})
    if tree["epoch"] < 0:
        raise CheckpointError(f"field 'epoch' must be >= 0, got {tree['epoch']}", path)
    if (tree["scheduler"] is None) != (scheduler is None):
        saved = "a" if tree["scheduler"] is not None else "no"
        given = "one was" if scheduler is not None else "none was"
        raise CheckpointError(f"has {saved} LR scheduler state but {given} given", path)
    _check_weights(path, model, tree["model"], tree["architecture"], strict=True)
    try:
        optimizer.check_state_dict(tree["optimizer"])
    except ValueError as e:
        raise CheckpointError(f"optimizer state does not fit: {e}", path) from e
    if scheduler is not None:
        try:
            scheduler.check_state_dict(tree["scheduler"])
        except ValueError as e:
            raise CheckpointError(f"LR scheduler state does not fit: {e}", path) from e
    rng = _checked_rng(path, tree["rng"])
    result = {"epoch": tree["epoch"], **tree["extra"]}
    if check_extra is not None:
        try:
            check_extra(result)
        except CheckpointError:
            raise
        except ValueError as e:
            raise CheckpointError(str(e), path) from e
    # Everything is valid: the model checks its arrays again before changing any, and
    # the loads below repeat checks that have passed, so none of them can fail midway.
    _load_weights(path, model, tree["model"], strict=True)
    optimizer.load_state_dict(tree["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(tree["scheduler"])
    mrandom.set_state(rng)
    return result


def _checked_rng(path, state):
    """The RNG state ``state`` (a JSON string or dict), after a trial on a spare generator."""
    try:
        state = json.loads(state) if isinstance(state, str) else state
        type(mrandom.default_rng().bit_generator)().state = state
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"field 'rng' is not a state of the global generator "
                              f"({type(e).__name__}: {e})", path) from e
    return state
