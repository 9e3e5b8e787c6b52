"""Checkpoints: model weights or a whole training state in one ``.npz``, never pickled.

A checkpoint is a nested tree (dicts, lists, tuples, numbers, strings, None
and ndarrays).  Saving splits it into its arrays, each an ``.npz`` member named
by its path in the tree (``model/0.weight``, ``optimizer/state/3/exp_avg``),
and everything else, kept as JSON in the member ``__meta__`` with
``{"__array__": path}`` where an array was.  ``np.load(allow_pickle=False)``
reads it back, so loading a file runs no code from it.  Dict keys must be
strings or ints; ints come back as strings (the optimizer accepts both).

Writes are atomic: the file is written to a temporary name in the same
directory, flushed to disk (fsync), then moved over the destination with
``os.replace``.  A crash mid-write leaves the previous checkpoint untouched.

Two kinds of file:

- **model** (:func:`save_model` / :func:`load_model`): the state dict plus
  free metadata (epoch, metrics, class names...).
- **training** (:func:`save_training_state` / :func:`load_training_state`):
  model, optimizer, scheduler, epoch, the global RNG state
  (:func:`minicnn.random.get_state`) and anything else given (loader states,
  history, callback states), everything needed to resume a run exactly.

A truncated or corrupt file, a file that is not a minicnn checkpoint, or a
checkpoint of another architecture raises :class:`CheckpointError` naming the
file and the problem.
"""
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import random as mrandom

FORMAT = "minicnn-checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
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


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


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


def load_state(path, kind=None):
    """Read a tree written by :func:`save_state`; ``kind`` (if given) must match the file's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads every member, so CRC errors surface here
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(e).__name__}: {e})") from e
    if _META not in arrays:
        raise CheckpointError(f"{path} is an .npz but not a minicnn checkpoint (no {_META!r} entry)")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minicnn checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta['version']}; this minicnn "
                              f"reads up to {VERSION} (upgrade minicnn)")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {meta.get('kind')!r} state, "
                              f"expected a {kind!r} one")
    try:
        return _decode(meta["tree"], arrays)
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} is missing the array {e} its metadata names") from e


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
            f"checkpoint {path} was saved from a {saved_class} whose weights do not fit this "
            f"{type(model).__name__} (another architecture?):\n" + "\n".join(problems))


def save_model(path, model, metadata=None):
    """Save ``model``'s state dict (and a dict of ``metadata``) to ``path`` atomically."""
    return save_state(path, {"architecture": type(model).__name__, "model": model.state_dict(),
                             "metadata": dict(metadata or {})}, kind="model")


def load_model(path, model, strict=True):
    """Load weights saved by :func:`save_model` (or a training state) into ``model``.

    Returns the saved metadata dict.  Raises :class:`CheckpointError` if the
    weights' names or shapes do not fit (any shape mismatch; with ``strict``,
    also missing or extra names).
    """
    tree = load_state(path)
    if "model" not in tree:
        raise CheckpointError(f"checkpoint {path} holds no model weights")
    _check_weights(path, model, tree["model"], tree.get("architecture", "model"), strict)
    model.load_state_dict(tree["model"], strict=strict)
    return tree.get("metadata", {})


# ------------------------------------------------------------- training state
def save_training_state(path, model, optimizer, scheduler=None, epoch=0, **extra):
    """Save everything needed to resume: model, optimizer, scheduler, ``epoch`` (completed
    epochs), the global RNG state and any ``extra`` trees (loader states, history...)."""
    tree = {"architecture": type(model).__name__, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "epoch": int(epoch), "rng": mrandom.get_state(), "extra": extra}
    return save_state(path, tree, kind="training")


def load_training_state(path, model, optimizer, scheduler=None):
    """Restore model, optimizer, scheduler and the global RNG from ``path``.

    Returns ``{'epoch': int, **extra}`` with the extra trees given to
    :func:`save_training_state`.  Everything is checked before anything is changed.
    """
    tree = load_state(path, kind="training")
    if (tree["scheduler"] is None) != (scheduler is None):
        saved = "a" if tree["scheduler"] is not None else "no"
        given = "one was" if scheduler is not None else "none was"
        raise CheckpointError(f"checkpoint {path} has {saved} LR scheduler state but {given} given")
    _check_weights(path, model, tree["model"], tree["architecture"], strict=True)
    try:  # validates the groups before changing anything
        optimizer.load_state_dict(tree["optimizer"])
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path}: optimizer state does not fit: {e}") from e
    model.load_state_dict(tree["model"])
    if scheduler is not None:
        scheduler.load_state_dict(tree["scheduler"])
    mrandom.set_state(tree["rng"])
    return {"epoch": int(tree["epoch"]), **tree["extra"]}
