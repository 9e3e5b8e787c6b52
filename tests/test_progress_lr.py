"""The progress line shows every parameter group's learning rate (issue 22: during fine-tuning it
showed only the head's), while History keeps the first group's as a number."""
import io

import numpy as np

from minicnn import nn
from minicnn.optim import SGD
from minicnn.train import fit


def test_progress_line_shows_each_param_groups_lr(rng):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2))
    groups = [{"params": list(model[3].parameters()), "lr": 1e-2},
              {"params": list(model[1].parameters()), "lr": 1e-3}]
    stream = io.StringIO()
    data = (rng.random((8, 3, 2, 2), dtype=np.float32), rng.integers(0, 2, 8))
    history = fit(model, data, epochs=1, optimizer=SGD(groups, lr=0.5), batch_size=4, seed=0, stream=stream)
    assert "lr 0.01/0.001" in stream.getvalue()
    assert history.history["lr"] == [1e-2]
    stream = io.StringIO()
    fit(model, data, epochs=1, optimizer=SGD(model.parameters(), lr=0.5), batch_size=4, seed=0, stream=stream)
    assert stream.getvalue().rstrip().endswith("lr 0.5")                 # one group, one value
