"""MPIStrategy: what Trainer / fit need to train data-parallel (``fit(..., strategy=MPIStrategy())``).

The training loop knows nothing of MPI (minicnn.train never imports this package);
it asks its ``strategy`` object, whose single-process default lives in
``minicnn.train.loop``.  This one, for ``mpiexec -n N``:

    is_main           rank 0: the only rank that prints, writes checkpoints and runs the
                      callbacks that write files (ModelCheckpoint, CSVLogger, plots)
    prepare           rank 0's weights and optimizer state on every rank; the optimizer
                      wrapped in DistributedOptimizer (gradients averaged)
    broadcast         rank 0's value (the run's seed) on every rank
    sampler           each rank's share of the training data (even, shuffled as one process
                      would) and of the validation data (no repeats)
    sum               totals (loss, metrics, images) added over the ranks, for the logs
    barrier           every rank waits, e.g. until rank 0 has written a checkpoint

``batch_size`` is then the batch of each rank: N ranks with batch B/N train as
one process with batch B.
"""
from .broadcast import broadcast_optimizer_state, broadcast_parameters
from .comm import allsum, init
from .optimizer import DistributedOptimizer
from .sampler import DistributedSampler


class MPIStrategy:
    """Data-parallel training over the MPI world (see the module docstring).
    ``bucket_bytes`` goes to :class:`DistributedOptimizer`."""

    def __init__(self, **optimizer_options):
        self.comm = init()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_main = self.rank == 0
        self.optimizer_options = optimizer_options

    def prepare(self, model, optimizer):
        broadcast_parameters(model)
        broadcast_optimizer_state(optimizer)
        if isinstance(optimizer, DistributedOptimizer):
            return optimizer
        return DistributedOptimizer(optimizer, **self.optimizer_options)

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def sampler(self, n, shuffle, seed, train):
        return DistributedSampler(n, self.size, self.rank, shuffle=shuffle, seed=seed, even=train)

    def sum(self, values):
        return allsum(values)

    def barrier(self):
        self.comm.Barrier()

    def __repr__(self):
        return f"MPIStrategy(rank {self.rank} of {self.size})"
