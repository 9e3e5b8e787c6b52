"""The MPI world: start-up, who am I, thread budget per rank, stopping every rank on a failure.

MPI starts in :func:`init` (explicitly, or on the first call of any function here),
never at import, so that ``import minicnn.distributed`` costs nothing and reports a
missing mpi4py only when it is used.

Threads.  Every rank runs minicnn's worker pool (see ``minicnn._runtime``); two ranks
on a 2-core machine, each with two workers, would fight for the cores.  :func:`init`
therefore sets ``MINICNN_NUM_THREADS`` to the usable CPUs divided by the ranks on
this node (at least 1) unless the user exported it, so ranks x threads <= cores.

Failures.  An MPI collective waits for every rank: a rank that dies of a Python
exception would leave the others waiting forever.  :func:`init` installs an
exception hook that prints the traceback with the rank's number and calls
``MPI_Abort``, which stops every rank.  A rank killed by a signal is detected by
``mpiexec`` itself, which stops the others and reports the signal.
"""
import os
import sys
import traceback

import numpy as np

INSTALL_HINT = 'minicnn.distributed needs mpi4py and an MPI library: pip install "minicnn[distributed]"'

_world = None   # (COMM_WORLD, node-local communicator), set by init()


def mpi():
    """The mpi4py.MPI module, or ImportError with the install command."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return MPI


def init():
    """Start MPI (idempotent); set this rank's thread budget and its failure hook.
    Returns the world communicator."""
    global _world
    if _world is None:
        MPI = mpi()
        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        _world = (world, node)
        if "MINICNN_NUM_THREADS" not in os.environ:
            os.environ["MINICNN_NUM_THREADS"] = str(threads_per_rank(node.Get_size()))
        if world.Get_size() > 1:
            sys.excepthook = _abort_all(sys.excepthook, world)
    return _world[0]


def threads_per_rank(ranks_on_node):
    """Worker threads for each of ``ranks_on_node`` ranks: the CPUs this process may use
    shared evenly, at least one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, ranks_on_node))


def _abort_all(previous, world):
    def hook(kind, value, tb):
        message = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"minicnn.distributed: rank {world.Get_rank()} of {world.Get_size()} failed; "
                         f"stopping every rank (MPI_Abort).\n{message}")
        sys.stderr.flush()
        world.Abort(1)
        previous(kind, value, tb)   # reached only if Abort returned
    return hook


def world():
    """The world communicator (starts MPI if needed)."""
    return init()


def rank():
    """This process's rank in the world, 0..size()-1."""
    return world().Get_rank()


def size():
    """The number of processes in the world."""
    return world().Get_size()


def local_rank():
    """This process's rank among the processes on its node (0 on each node's first)."""
    init()
    return _world[1].Get_rank()


def local_size():
    """The number of processes on this node."""
    init()
    return _world[1].Get_size()


def barrier():
    """Wait until every rank reaches this call."""
    world().Barrier()


def allsum(array):
    """Elementwise sum of ``array`` over the ranks, float64, the same bits on every rank:
    gathered and added in rank order (MPI's own reduction may round differently per
    rank).  For small arrays (statistics, metrics); gradients go through Allreduce."""
    comm = world()
    local = np.ascontiguousarray(array, dtype=np.float64)
    gathered = np.empty((comm.Get_size(),) + local.shape)
    comm.Allgather(local, gathered)
    return gathered.sum(axis=0)
