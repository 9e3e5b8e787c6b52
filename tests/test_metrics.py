"""Metrics against naive per-sample references written here."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.train.metrics import (accuracy, classification_report, confusion_matrix,
                                   precision_recall_f1, top_k_accuracy)


@st.composite
def labelled(draw, max_classes=6, max_n=40):
    c = draw(st.integers(2, max_classes))
    n = draw(st.integers(1, max_n))
    ints = st.lists(st.integers(0, c - 1), min_size=n, max_size=n)
    return c, np.array(draw(ints)), np.array(draw(ints))


def _naive_cm(t, p, c):
    cm = [[0] * c for _ in range(c)]
    for a, b in zip(t, p):
        cm[a][b] += 1
    return np.array(cm)


@given(labelled())
@settings(max_examples=60)
def test_confusion_matrix_and_scores(case):
    c, t, p = case
    cm = confusion_matrix(t, p, num_classes=c)
    np.testing.assert_array_equal(cm, _naive_cm(t, p, c))
    prec, rec, f1, sup = precision_recall_f1(cm)
    for k in range(c):
        tp = sum(1 for a, b in zip(t, p) if a == b == k)
        npred, ntrue = sum(1 for b in p if b == k), sum(1 for a in t if a == k)
        want_p = tp / npred if npred else 0.0
        want_r = tp / ntrue if ntrue else 0.0
        want_f = 2 * want_p * want_r / (want_p + want_r) if want_p + want_r else 0.0
        assert prec[k] == pytest.approx(want_p) and rec[k] == pytest.approx(want_r)
        assert f1[k] == pytest.approx(want_f) and sup[k] == ntrue
    assert accuracy(t, p) == pytest.approx(sum(a == b for a, b in zip(t, p)) / len(t))


@given(st.integers(1, 30), st.integers(2, 8), st.data())
@settings(max_examples=40)
def test_top_k_against_naive(n, c, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    scores = rng.permutation(n * c).reshape(n, c).astype(float)  # distinct: no ties
    y = rng.integers(0, c, n)
    k = data.draw(st.integers(1, c))
    want = np.mean([y[i] in sorted(range(c), key=lambda j: -scores[i, j])[:k] for i in range(n)])
    assert top_k_accuracy(y, scores, k) == pytest.approx(want)
    assert top_k_accuracy(y, scores, 1) == pytest.approx(accuracy(y, scores))
    assert top_k_accuracy(y, scores, c) == 1.0


def test_scores_are_argmaxed():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert accuracy([1, 0, 1], logits) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(confusion_matrix([1, 0, 1], logits),
                                  [[1, 0, 0], [0, 1, 1], [0, 0, 0]])


def test_report_text():
    t = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0, 2])
    text = classification_report(t, p, ["cat", "dog", "T-shirt/top"], digits=3)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["cat", "0.500", "0.500", "0.500", "2"]
    assert lines[3].split() == ["dog", "0.667", "1.000", "0.800", "2"]
    assert lines[4].split() == ["T-shirt/top", "1.000", "0.667", "0.800", "3"]
    assert lines[6].split() == ["accuracy", "0.714", "7"]
    assert lines[7].split()[:2] == ["macro", "avg"]
    assert float(lines[7].split()[2]) == pytest.approx((0.5 + 2 / 3 + 1) / 3, abs=5e-4)
    assert float(lines[8].split()[4]) == pytest.approx((2 * 0.5 + 2 * 0.8 + 3 * 0.8) / 7, abs=5e-4)


@pytest.mark.parametrize("call, err", [
    (lambda: accuracy([0, 1], [0]), ValueError),
    (lambda: accuracy([], []), ValueError),
    (lambda: accuracy([0.5, 1.0], [0, 1]), TypeError),
    (lambda: top_k_accuracy([0, 1], np.zeros((2, 3)), k=4), ValueError),
    (lambda: confusion_matrix([0, 3], [0, 1], num_classes=3), ValueError),
    (lambda: precision_recall_f1(np.zeros((2, 3))), ValueError),
])
def test_bad_input(call, err):
    with pytest.raises(err):
        call()
