"""DistributedOptimizer: every rank steps with the gradient averaged over all ranks.

Data parallelism in one line: each of N ranks computes the gradient of its own
shard of the batch, and before the update the gradients are averaged,

    g ← (1/N)·Σ_ranks g_rank

so that N ranks with batch B/N take the step one process takes with batch B
(the loss being a mean over the batch).  Every rank then applies the same update
to the same weights, and the weights stay equal without being sent again.

How.  The trainable parameters (``requires_grad``) are packed into a few flat,
contiguous buckets per dtype (at most ``bucket_bytes`` each, default 25 MiB as
PyTorch DDP's), and each bucket is summed with one in-place ``Allreduce``: a
call costs a latency plus bytes/bandwidth, so few large calls beat one per
tensor.  Each bucket carries, after its gradients, one flag per parameter that
says whether the rank had a gradient for it; a parameter that no rank had a
gradient for keeps ``grad = None`` (and the optimizer skips it, as in one
process), one that some ranks lacked counts as zero there.  Frozen parameters
are not sent.  After ``step``, ``p.grad`` is a view into its bucket (valid
until the next step).  The buffers are planned once and re-planned when the set
of trainable parameters changes (e.g. unfreezing).

The reduction is not overlapped with the backward pass: that needs a hook when
a parameter's gradient is complete, which minicnn's autograd does not offer.

MPI's Allreduce gives every rank the same sums for the reduction algorithms
MPICH and Open MPI use, so the replicas stay bit-identical.

``allreduce_seconds`` and ``allreduce_calls`` count the time spent inside
Allreduce (for benchmarks and the cost model in docs/scaling.md).
"""
import time

import numpy as np

from .comm import mpi, world

BUCKET_BYTES = 25 << 20


class _Bucket:
    """Parameters of one dtype packed back to back, then one flag per parameter."""

    def __init__(self, params, dtype):
        self.params = params
        self.offsets = np.cumsum([0] + [p.data.size for p in params])
        self.buffer = np.empty(int(self.offsets[-1]) + len(params), dtype)

    def pack(self):
        n = int(self.offsets[-1])
        for i, p in enumerate(self.params):
            seg = self.buffer[self.offsets[i]:self.offsets[i + 1]]
            if p.grad is None:
                seg[...] = 0
            else:
                seg[...] = p.grad.reshape(-1)
            self.buffer[n + i] = p.grad is not None

    def unpack(self, scale):
        n = int(self.offsets[-1])
        self.buffer[:n] *= scale
        for i, p in enumerate(self.params):
            if self.buffer[n + i] > 0:
                p.grad = self.buffer[self.offsets[i]:self.offsets[i + 1]].reshape(p.data.shape)


def _plan(params, bucket_bytes):
    """Buckets of at most ``bucket_bytes`` (a larger single parameter gets its own), per dtype."""
    by_dtype = {}
    for p in params:
        by_dtype.setdefault(p.data.dtype, []).append(p)
    buckets = []
    for dtype, group in by_dtype.items():
        current, size = [], 0
        for p in group:
            if current and size + p.data.nbytes > bucket_bytes:
                buckets.append(_Bucket(current, dtype))
                current, size = [], 0
            current.append(p)
            size += p.data.nbytes
        buckets.append(_Bucket(current, dtype))
    return buckets


class DistributedOptimizer:
    """Wrap ``optimizer`` so that ``step()`` first averages the gradients over every rank.

    Everything else (``zero_grad``, ``param_groups``, ``state_dict``, LR schedulers,
    checkpoints) goes to the wrapped optimizer.  Every rank must call ``step`` the same
    number of times with the same parameters trainable (it is a collective call).

    >>> opt = DistributedOptimizer(Adam(model.parameters(), lr=1e-3))
    >>> loss.backward(); opt.step()
    """

    def __init__(self, optimizer, bucket_bytes=BUCKET_BYTES):
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("DistributedOptimizer: the optimizer is already distributed")
        if bucket_bytes <= 0:
            raise ValueError(f"DistributedOptimizer: bucket_bytes must be positive, got {bucket_bytes!r}")
        self.optimizer, self.bucket_bytes = optimizer, int(bucket_bytes)
        self.allreduce_seconds, self.allreduce_calls = 0.0, 0
        self._key, self._buckets = None, []

    def __getattr__(self, name):
        # Only reached for names this wrapper does not define: the optimizer's own.
        return getattr(self.__dict__["optimizer"], name)

    def synchronize(self):
        """Average the gradients of the trainable parameters over every rank, in place."""
        MPI, comm = mpi(), world()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        key = tuple((id(p), p.data.shape, p.data.dtype.str) for p in params)
        if key != self._key:
            self._key, self._buckets = key, _plan(params, self.bucket_bytes)
        scale = 1.0 / comm.Get_size()
        for bucket in self._buckets:
            bucket.pack()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM)
            self.allreduce_seconds += time.perf_counter() - start
            self.allreduce_calls += 1
            bucket.unpack(scale)

    def step(self):
        """Average the gradients over the ranks, then the wrapped optimizer's step."""
        self.synchronize()
        self.optimizer.step()

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r})"
