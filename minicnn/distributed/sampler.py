"""DistributedSampler: each rank's disjoint share of every epoch, for ``DataLoader(sampler=...)``.

Epoch e's order is the one a single-process DataLoader with the same seed uses,
``np.random.default_rng(SeedSequence([seed, e])).permutation(n)`` (or 0..n-1
without shuffling), dealt out in turn: rank r gets positions r, r + N, r + 2N, ...
So batch k of N ranks with batch size b holds exactly the images of batch k of
one process with batch size N·b, and N ranks with batch B/N train as one
process with batch B.

``even=True`` (for training) repeats the first images of the order to make n a
multiple of N, so every rank has the same number of batches (each batch is a
collective step); ``even=False`` (evaluation) gives the first n mod N ranks
one image more and repeats nothing.

The sampler knows its ``rank``: a DataLoader mixes it into its transforms'
random stream, so ranks augment their images independently.
"""
import numpy as np

from .comm import rank as world_rank, size as world_size


class DistributedSampler:
    """Indices of rank ``rank``'s share of ``n`` examples for the current epoch.

    n: dataset size.  num_replicas, rank: default the MPI world's size and this rank.
    shuffle: a new order every epoch from ``seed`` (the same on every rank).
    even: pad to a multiple of num_replicas (see the module docstring).
    ``set_epoch(e)`` selects epoch e (a DataLoader calls it at every epoch).
    """

    def __init__(self, n, num_replicas=None, rank=None, shuffle=True, seed=0, even=True):
        if num_replicas is None or rank is None:
            num_replicas = world_size() if num_replicas is None else num_replicas
            rank = world_rank() if rank is None else rank
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"DistributedSampler: n must be a positive int, got {n!r}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive int, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), got {rank!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DistributedSampler: seed must be a non-negative int, got {seed!r}")
        self.n, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.even = shuffle, int(seed), even
        self.epoch = 0

    def set_epoch(self, epoch):
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"DistributedSampler: epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self):
        n, N = self.n, self.num_replicas
        return -(-n // N) if self.even else n // N + (self.rank < n % N)

    def indices(self):
        """This rank's indices for the current epoch (int64 array)."""
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.even and self.n % self.num_replicas:
            order = np.resize(order, len(self) * self.num_replicas)   # repeats from the start
        return order[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __repr__(self):
        return (f"DistributedSampler(n={self.n}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, even={self.even})")
