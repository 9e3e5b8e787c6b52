"""safetensors (issue 22): minicnn state dicts written and read with the safetensors package's
NumPy API under PyTorch's names, so PyTorch loads a minicnn-trained ResNet-20 with
safetensors.torch.load_file and computes the same logits, and back."""
import numpy as np
import pytest

from minicnn.cli import main
from minicnn.errors import FileFormatError, LimitExceededError
from minicnn.io import load_pretrained, load_safetensors, load_state, load_torch, safetensors_metadata, \
    save_safetensors
from minicnn.models import resnet20
from minicnn.optim import SGD
from minicnn.tensor import Tensor, no_grad
from minicnn.train import fit
from test_pretrained import torch_resnet   # akamaster's ResNet in PyTorch, the names minicnn uses

pytest.importorskip("safetensors", reason="the 'safetensors' extra is not installed")


@pytest.fixture(scope="module")
def trained():
    """A ResNet-20 after one short epoch on random images: weights and running statistics moved."""
    rng = np.random.default_rng(1)
    model = resnet20()
    images = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    fit(model, (images, rng.integers(0, 10, 32)), epochs=1, batch_size=16, verbose=0, seed=0,
        optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9))
    assert model.bn1.num_batches_tracked == 2
    return model


def _logits(model, x):
    model.eval()
    with no_grad():
        return model(Tensor(x)).data


def test_round_trip_keeps_names_values_dtypes_and_metadata(trained, tmp_path):
    path = save_safetensors(tmp_path / "sub" / "r20.safetensors", trained, metadata={"arch": "resnet20"})
    state = load_safetensors(path)
    want = trained.state_dict()
    assert set(state) == set(want) and len(state) == 116
    for k, v in want.items():
        assert state[k].dtype == v.dtype and state[k].shape == v.shape
        np.testing.assert_array_equal(state[k], v)
    assert safetensors_metadata(path) == {"arch": "resnet20"}
    fresh = resnet20()
    load_pretrained(fresh, path)                              # through load_torch's .safetensors branch
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(_logits(fresh, x), _logits(trained, x))
    assert list(load_torch(path)) == list(state)


def test_convert_accepts_safetensors(trained, tmp_path, capsys):
    src = save_safetensors(tmp_path / "r20.safetensors", trained)
    assert main(["convert", str(src), str(tmp_path / "r20.npz"), "--arch", "resnet20"]) == 0
    saved = load_state(tmp_path / "r20.npz")["model"]
    np.testing.assert_array_equal(saved["layer3.2.conv2.weight"], trained.layer3[2].conv2.weight.data)


def test_bad_files_are_named_errors(tmp_path, trained):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\0\0\0\0\0\0\0" + b'{"a": 1}        ')
    with pytest.raises(FileFormatError, match="bad.safetensors: not a valid safetensors file"):
        load_safetensors(bad)
    good = save_safetensors(tmp_path / "good.safetensors", trained)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(FileFormatError, match="cut.safetensors"):
        load_safetensors(cut)
    with pytest.raises(LimitExceededError, match="max_bytes=1000"):
        load_safetensors(good, max_bytes=1000)
    with pytest.raises(TypeError, match="strings to strings"):
        save_safetensors(tmp_path / "m.safetensors", trained, metadata={"epoch": 3})


def test_pytorch_loads_a_minicnn_trained_resnet20(torch, trained, tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    path = save_safetensors(tmp_path / "r20.safetensors", trained)
    twin = torch_resnet(torch, 20)
    twin.load_state_dict(st_torch.load_file(str(path)), strict=True)      # every name, every shape
    twin.eval()
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    ours = _logits(trained, x)
    assert np.abs(theirs - ours).max() <= 1e-4 * max(1.0, np.abs(ours).max())
    assert int(twin.bn1.num_batches_tracked) == 2


def test_minicnn_loads_a_pytorch_written_file(torch, tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    twin = torch_resnet(torch, 20)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    twin.eval()
    st_torch.save_file(twin.state_dict(), str(tmp_path / "torch.safetensors"))
    model = resnet20()
    load_pretrained(model, tmp_path / "torch.safetensors")
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_logits(model, x), theirs, rtol=0, atol=1e-4)
