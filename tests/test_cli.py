"""``python -m minicnn``: sub-command structure and ``convert`` (real weights when present,
torch-written synthetic ones where torch is installed, errors always)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn.cli import main
from minicnn.io import load_model, load_state, sha256sum
from minicnn.models import pretrained as P
from minicnn.models.resnet_cifar import resnet20

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "cifar10-resnet"
ROOT = Path(__file__).resolve().parents[1]


def test_module_entry_point_lists_commands():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "minicnn", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "convert" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "minicnn", "frobnicate"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'frobnicate'" in bad.stderr


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="shared CIFAR ResNet weights not present")
def test_convert_real_resnet_checkpoint(tmp_path, capsys):
    src = P.find_cifar_resnet_file(WEIGHTS, 20)
    dst = tmp_path / "out" / "resnet20.npz"
    assert main(["convert", str(src), str(dst), "--arch", "resnet20"]) == 0
    assert "resnet20, 116 arrays, 269,722 parameters" in capsys.readouterr().out
    model = resnet20()
    meta = load_model(dst, model)
    assert meta == {"arch": "resnet20", "source": str(src.resolve()), "source_sha256": sha256sum(src)}
    ref = P.load_cifar_resnet("resnet20", src)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    # a folder works too, and the wrong architecture is refused with the reason
    assert main(["convert", str(WEIGHTS), str(tmp_path / "b.npz"), "--arch", "resnet20"]) == 0
    assert main(["convert", str(src), str(tmp_path / "c.npz"), "--arch", "resnet44"]) == 1
    err = capsys.readouterr().err
    assert "cannot convert" in err and "as resnet44" in err and "missing from the source" in err
    assert not (tmp_path / "c.npz").exists()


def test_convert_torch_written_efficientnet_checkpoint(torch, tmp_path):
    """A checkpoint torch.save writes (zip format, lukemelas names, random values) converts exactly."""
    from minicnn.models.efficientnet import efficientnet_lite0
    ours = efficientnet_lite0()
    rng = np.random.default_rng(0)
    theirs = _lukemelas_names(ours)
    state = {theirs[k]: torch.from_numpy(rng.standard_normal(v.shape).astype(v.dtype) if v.ndim else v)
             for k, v in ours.state_dict().items()}
    src, dst = tmp_path / "lite0.pth", tmp_path / "lite0.npz"
    torch.save(state, src)
    assert main(["convert", str(src), str(dst), "--arch", "efficientnet_lite0"]) == 0
    saved = load_state(dst)["model"]
    for mine, name in theirs.items():
        np.testing.assert_array_equal(saved[mine], state[name].numpy())


def _lukemelas_names(model):
    """minicnn name -> lukemelas name, by applying the rename table to lukemelas-style keys."""
    from minicnn.io import rename_key
    names = ["_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"]
    names += [f"{bn}.{s}" for bn in ("_bn0", "_bn1")
              for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    for i, block in enumerate(model.blocks):
        parts = (["_expand_conv", "_bn0"] if hasattr(block, "expand") else []) + \
            ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
        for part in parts:
            suffixes = ("weight",) if part.endswith("conv") else (
                "weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            names += [f"_blocks.{i}.{part}.{s}" for s in suffixes]
    mapping = {rename_key(n, P.LUKEMELAS_RENAMES): n for n in names}
    assert set(mapping) == set(model.state_dict())
    return mapping


def test_convert_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "x.npz"), "--arch", "resnet20"]) == 1
    assert "neither a file nor a folder" in capsys.readouterr().err
    (tmp_path / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "x.npz"),
                 "--arch", "efficientnet_lite0"]) == 1
    assert "os.system" in capsys.readouterr().err
    assert main(["convert", "a.pth", str(tmp_path / "x.pt"), "--arch", "resnet20"]) == 1
    assert "DST must end in .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", "a.pth", "b.npz", "--arch", "vgg16"])
    assert e.value.code == 2 and "invalid choice: 'vgg16'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.npz"))
