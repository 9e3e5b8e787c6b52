"""Start every rank from the same state: rank ``root``'s weights, buffers and optimizer state.

Call both once after building the model and optimizer (and after loading a
checkpoint on ``root`` only, if the file is not visible to every rank):

    broadcast_parameters(model)
    broadcast_optimizer_state(optimizer)
"""
import numpy as np

from .comm import world


def _arrays(model):
    """(name, ndarray) for every parameter and buffer of ``model``, in a fixed order."""
    return [(name, p.data) for name, p in model.named_parameters()] + list(model.named_buffers())


def _difference(layout, expected):
    """The first (name, shape, dtype) of ``layout`` that differs from ``expected``'s, or None."""
    for i in range(max(len(layout), len(expected))):
        mine = layout[i] if i < len(layout) else "nothing"
        want = expected[i] if i < len(expected) else "nothing"
        if mine != want:
            return f"tensor #{i} is {mine} here and {want} on the root"
    return None


def broadcast_parameters(model, root=0):
    """Overwrite every parameter and buffer of ``model`` with rank ``root``'s, in place.

    Raises ValueError on every rank, naming the first tensor (name, shape, dtype) that
    differs from ``root``'s, when the ranks built different models."""
    comm = world()
    arrays = _arrays(model)
    layout = [(name, a.shape, a.dtype.str) for name, a in arrays]
    problems = comm.allgather(_difference(layout, comm.bcast(layout, root=root)))
    for r, problem in enumerate(problems):
        if problem is not None:
            raise ValueError(f"broadcast_parameters: rank {r}'s model differs from rank {root}'s: {problem}")
    for _, a in arrays:
        buf = a if a.flags.c_contiguous and a.flags.writeable else a.copy()
        comm.Bcast(buf, root=root)
        if buf is not a:
            a[...] = buf


def broadcast_optimizer_state(optimizer, root=0):
    """Load rank ``root``'s optimizer state (options and per-parameter state) on every rank."""
    comm = world()
    state = comm.bcast(optimizer.state_dict() if comm.Get_rank() == root else None, root=root)
    if comm.Get_rank() != root:
        optimizer.load_state_dict(state)
