"""Transfer-learning API: freezing, BatchNorm kept in eval mode, head replacement, param groups,
gradual unfreezing, and the cached-feature split (rest(prefix(x)) == model(x))."""
import io

import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.optim import SGD
from minicnn.train import fit
from minicnn.transfer import (GradualUnfreezing, TransferModel, classifier_head, extract_features, freeze,
                              parameter_counts, unfreeze)


def stage(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def small_model(num_classes=3, bn_eval="frozen"):
    """A 4-stage conv backbone on 3x12x12 images with a classifier head."""
    backbone = [stage(3, 4), stage(4, 6, 2), stage(6, 8), stage(8, 8, 2)]
    return TransferModel(backbone, classifier_head(8, num_classes, hidden=5, dropout=0.5), bn_eval)


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 12, 12)).astype(np.float32), rng.integers(0, 3, n)


def run(model, x):
    with minicnn.no_grad():
        return model(minicnn.Tensor(x)).data


def bns(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


# ---------------------------------------------------------------- freeze / unfreeze
def test_freeze_by_prefix_matches_whole_name_components():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    assert freeze(net, "1") == ["1.weight", "1.bias"]  # not 10.*, 11.*
    assert [p.requires_grad for p in net[1].parameters()] == [False, False]
    assert all(p.requires_grad for p in net[10].parameters())
    assert freeze(net, ["10.", "11.weight"]) == ["10.weight", "10.bias", "11.weight"]
    assert parameter_counts(net) == (12 * 6 - 6 - 6 - 4, 12 * 6)
    assert unfreeze(net, "1") == ["1.weight", "1.bias"] and net[1].weight.requires_grad
    freeze(net)
    assert parameter_counts(net) == (0, 72)
    unfreeze(net[11])
    assert parameter_counts(net) == (6, 72)


def test_freeze_errors():
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no parameters under \['layer1'\]"):
        freeze(net, "layer1")
    with pytest.raises(TypeError, match="expected a Module"):
        freeze([1, 2])


def test_frozen_parameters_are_not_updated_by_training():
    model = small_model()
    freeze(model, "backbone.0")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fit(model, data(), epochs=1, optimizer=SGD(model.parameters(), lr=0.1), batch_size=8, verbose=0, seed=0)
    after = model.state_dict()
    assert np.array_equal(after["backbone.0.0.weight"], before["backbone.0.0.weight"])
    assert not np.array_equal(after["backbone.1.0.weight"], before["backbone.1.0.weight"])


# ---------------------------------------------------------------- BatchNorm stays in eval mode
def test_frozen_batchnorm_stays_in_eval_mode_through_train_and_fit():
    model = small_model().freeze_backbone()
    model.train()
    assert [m.training for m in bns(model)] == [False] * 4
    assert model.head[4].training  # dropout still trains
    stats = [m.running_mean.copy() for m in bns(model)]
    fit(model, data(), epochs=2, optimizer=SGD(model.parameters(), lr=0.1), batch_size=8, verbose=0, seed=0)
    assert all(np.array_equal(m.running_mean, s) for m, s in zip(bns(model), stats))
    assert all(int(m.num_batches_tracked) == 0 for m in bns(model))
    model.unfreeze_top(1).train()
    assert [m.training for m in bns(model)] == [False, False, False, True]
    model.eval()
    assert not any(m.training for m in model.modules())


def test_bn_eval_all_keeps_finetuned_backbone_norms_in_eval():
    model = small_model(bn_eval="all").unfreeze_top(4)
    model.train()
    assert not any(m.training for m in bns(model)) and model.head[4].training
    with pytest.raises(ValueError, match="bn_eval"):
        small_model(bn_eval="never")


def test_batchnorm_in_eval_mode_gives_each_image_the_same_output_alone_or_in_a_batch():
    model = small_model().freeze_backbone()
    for m in bns(model):
        m.running_mean[...] = np.linspace(-1, 1, m.num_features)
    model.train()
    x, _ = data(8)
    prefix, _ = model.split()
    prefix.train()  # a plain Sequential: BN would use batch statistics here ...
    model.train()   # ... but TransferModel.train puts the frozen ones back
    with minicnn.no_grad():
        whole = model.backbone(minicnn.Tensor(x)).data
        one = model.backbone(minicnn.Tensor(x[:1])).data
    np.testing.assert_allclose(one, whole[:1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- head, groups, unfreezing
def test_classifier_head_layout_and_shapes():
    head = classifier_head(1280, 5)
    names = [type(m).__name__ for m in head]
    assert names == ["GlobalAvgPool2d", "Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert head[2].weight.shape == (128, 1280) and head[5].weight.shape == (5, 128) and head[4].p == 0.2
    assert run(head.eval(), np.ones((2, 1280, 7, 7), np.float32)).shape == (2, 5)
    with pytest.raises(ValueError, match="positive"):
        classifier_head(8, 0)


def test_unfreeze_top_and_param_groups():
    model = small_model().freeze_backbone()
    trainable = lambda: [any(p.requires_grad for p in s.parameters()) for s in model.backbone]  # noqa: E731
    assert trainable() == [False] * 4
    model.unfreeze_top(2)
    assert trainable() == [False, False, True, True]
    assert all(p.requires_grad for p in model.head.parameters())
    with pytest.raises(ValueError, match=r"0\.\.4"):
        model.unfreeze_top(5)
    groups = model.param_groups(lr=1e-2, backbone_lr=1e-3, decay=0.5)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3 * 0.5 ** 3, 1e-3 * 0.25, 1e-3 * 0.5, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = SGD(groups, lr=0.1)
    assert [g["lr"] for g in opt.param_groups][0] == 1e-2


def test_gradual_unfreezing_trains_top_stages_first():
    model = small_model().freeze_backbone()
    opt = SGD(model.param_groups(lr=0.05, backbone_lr=0.05), lr=0.05)
    w = [s[0].weight.data.copy() for s in model.backbone]
    log = io.StringIO()
    fit(model, data(), epochs=2, optimizer=opt, batch_size=8, seed=0, stream=log,
        callbacks=[GradualUnfreezing({0: 0, 1: 2})])
    changed = [not np.array_equal(s[0].weight.data, w0) for s, w0 in zip(model.backbone, w)]
    assert changed == [False, False, True, True]
    assert "epoch 2: top 2 of 4 backbone stages trainable" in log.getvalue()
    with pytest.raises(ValueError, match="schedule"):
        GradualUnfreezing({})
    with pytest.raises(TypeError, match="needs a TransferModel"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(432, 3)), data(), epochs=1, optimizer=opt,
            verbose=0, callbacks=[GradualUnfreezing({0: 1})])


# ---------------------------------------------------------------- cached features
def test_split_cuts_frozen_stages_and_pooling_but_keeps_flatten():
    model = small_model().freeze_backbone()
    prefix, rest = model.split()
    assert len(prefix) == 5 and isinstance(prefix[4], nn.GlobalAvgPool2d)
    assert len(rest.backbone) == 0 and [type(m).__name__ for m in rest.head][0] == "Flatten"
    x, _ = data(6)
    model.eval()
    feats = extract_features(prefix, x)
    assert feats.shape == (6, 8, 1, 1) and feats.dtype == np.float32
    np.testing.assert_allclose(run(rest.eval(), feats), run(model, x), rtol=1e-5, atol=1e-6)
    model.unfreeze_top(1)
    prefix, rest = model.split()
    assert len(prefix) == 3 and len(rest.backbone) == 1 and rest.head is model.head
    assert extract_features(prefix, x).shape == (6, 8, 6, 6)
    model.unfreeze_top(4)
    prefix, rest = model.split()
    assert len(prefix) == 0
    np.testing.assert_array_equal(extract_features(prefix, x), x)


def test_split_stops_at_dropout_and_unfrozen_norms():
    backbone = [stage(3, 4), nn.Dropout(0.1), stage(4, 4)]
    model = TransferModel(backbone, classifier_head(4, 2)).freeze_backbone()
    assert len(model.split()[0]) == 1
    model = TransferModel([stage(3, 4)], classifier_head(4, 2))
    freeze(model, "backbone.0.0")  # conv frozen, its BatchNorm not
    assert len(model.split()[0]) == 0


def test_training_the_head_on_cached_features_equals_training_it_on_images():
    """Same seed, same batches: identical head weights, with the backbone run once, not per epoch."""
    x, y = data(32, seed=1)
    results = []
    for cached in (False, True):
        minicnn.manual_seed(0)
        model = small_model().freeze_backbone()
        if cached:
            prefix, rest = model.split()
            trained, inputs = rest, extract_features(prefix, x)
        else:
            trained, inputs = model, x
        fit(trained, (inputs, y), epochs=3, optimizer=SGD(trained.parameters(), lr=0.1, momentum=0.9),
            batch_size=8, verbose=0, seed=3)
        results.append(model.state_dict())
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_transfer_model_accepts_module_or_list_and_rejects_junk():
    single = TransferModel(nn.Conv2d(3, 4, 3), classifier_head(4, 2))  # one stage
    assert len(single.backbone) == 1
    assert len(TransferModel(stage(3, 4), classifier_head(4, 2)).backbone) == 3  # a Sequential: its layers
    with pytest.raises(TypeError, match="backbone"):
        TransferModel([stage(3, 4), "relu"], classifier_head(4, 2))
    assert run(single.eval(), data(2)[0]).shape == (2, 2)
