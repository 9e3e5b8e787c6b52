"""Data-parallel training on MPI (optional extra: ``pip install "minicnn[distributed]"``,
which installs mpi4py and MPICH's ``mpiexec``).  Horovod's names:

    import minicnn.distributed as dist
    dist.init()                                   # MPI starts here, not at import
    model = dist.convert_sync_batchnorm(model)    # optional: batch norm over all ranks
    optimizer = dist.DistributedOptimizer(Adam(model.parameters(), lr=1e-3))
    dist.broadcast_parameters(model); dist.broadcast_optimizer_state(optimizer)
    loader = DataLoader(data, batch_size=32, sampler=dist.DistributedSampler(len(data.labels), seed=0))

or all of it through the training loop: ``fit(model, data, ..., strategy=dist.MPIStrategy())``.
Run with ``mpiexec -n 4 python train.py``.  Nothing else in minicnn imports this package.

    comm.py             init, rank, size, local_rank, local_size, barrier, threads per rank
    broadcast.py        broadcast_parameters, broadcast_optimizer_state
    optimizer.py        DistributedOptimizer (bucketed Allreduce of the gradients)
    sampler.py          DistributedSampler (each rank's share of every epoch)
    sync_batchnorm.py   SyncBatchNorm, convert_sync_batchnorm
    strategy.py         MPIStrategy, the hook object for Trainer / fit
"""
from .broadcast import broadcast_optimizer_state, broadcast_parameters
from .comm import allsum, barrier, init, local_rank, local_size, rank, size, threads_per_rank, world
from .optimizer import DistributedOptimizer
from .sampler import DistributedSampler
from .strategy import MPIStrategy
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["init", "rank", "size", "local_rank", "local_size", "barrier", "world", "allsum",
           "threads_per_rank", "broadcast_parameters", "broadcast_optimizer_state", "DistributedOptimizer",
           "DistributedSampler", "SyncBatchNorm", "convert_sync_batchnorm", "MPIStrategy"]
