"""Classification metrics on plain arrays.

``y_true`` is (N,) integer class indices.  Predictions are either (N,) class
indices or (N, C) scores (logits or probabilities), from which the predicted
class is the argmax (the first one on ties).

    cm[i, j] = #{n : y_true[n] = i and y_pred[n] = j}      (rows true, columns predicted)
    precision_c = cm[c, c] / Σ_i cm[i, c]      recall_c = cm[c, c] / Σ_j cm[c, j]
    F1_c = 2·precision_c·recall_c / (precision_c + recall_c)

A ratio whose denominator is 0 is reported as 0 (scikit-learn's
``zero_division=0``).
"""
import numpy as np


def _labels(y, name="y_true"):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices (N,), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    return y


def as_predictions(y_pred):
    """Class indices (N,) from (N,) indices or (N, C) scores."""
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        return y_pred.argmax(axis=1)
    return _labels(y_pred, "y_pred")


def _pair(y_true, y_pred):
    y_true, y_pred = _labels(y_true), as_predictions(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples but y_pred has {len(y_pred)}")
    return y_true, y_pred


def correct(y_true, y_pred):
    """Number of samples whose predicted class is the true one."""
    y_true, y_pred = _pair(y_true, y_pred)
    return int(np.count_nonzero(y_true == y_pred))


def accuracy(y_true, y_pred):
    """Fraction of samples predicted correctly, in [0, 1]."""
    y_true, _ = _pair(y_true, y_pred)
    if len(y_true) == 0:
        raise ValueError("accuracy of zero samples is undefined")
    return correct(y_true, y_pred) / len(y_true)


def top_k_accuracy(y_true, scores, k=5):
    """Fraction of samples whose true class is among the k highest of ``scores`` (N, C).

    Ties at the k-th score count in the sample's favour only if the true class is
    among the first k by ``argsort`` (stable, like argmax for k=1).
    """
    y_true, scores = _labels(y_true), np.asarray(scores)
    if scores.ndim != 2 or len(scores) != len(y_true):
        raise ValueError(f"scores must be (N, C) with N = {len(y_true)}, got shape {scores.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    if len(y_true) == 0:
        raise ValueError("top-k accuracy of zero samples is undefined")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """(C, C) int64 counts, rows true class, columns predicted class.

    ``num_classes`` defaults to 1 + the largest index seen (or the score width).
    """
    width = np.shape(y_pred)[1] if np.ndim(y_pred) == 2 else None
    y_true, y_pred = _pair(y_true, y_pred)
    if num_classes is None:
        seen = [int(y.max()) + 1 for y in (y_true, y_pred) if y.size]
        num_classes = max(seen + [width or 0])
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds classes outside [0, {num_classes})")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num, den):
    out = np.zeros(len(num), np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(cm):
    """Per-class (precision, recall, f1, support) arrays from a confusion matrix."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square (C, C), got shape {cm.shape}")
    tp = np.diag(cm).astype(np.float64)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, cm.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, cm.sum(axis=1)


def classification_report(y_true, y_pred, class_names=None, digits=4):
    """A text table: precision, recall, F1 and support per class, then accuracy,
    macro average (plain mean over classes) and weighted average (by support)."""
    cm = confusion_matrix(y_true, y_pred, None if class_names is None else len(class_names))
    names = [str(c) for c in (class_names if class_names is not None else range(len(cm)))]
    p, r, f, s = precision_recall_f1(cm)
    total = int(s.sum())
    if total == 0:
        raise ValueError("classification report of zero samples is undefined")
    width = max(len("weighted avg"), *(len(n) for n in names))
    num = f"{{:>10.{digits}f}}"
    head = f"{'':>{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"
    rows = [head, ""]
    for n, *vals, sup in zip(names, p, r, f, s):
        rows.append(f"{n:>{width}}" + "".join(num.format(v) for v in vals) + f"{int(sup):>10}")
    rows.append("")
    acc = np.trace(cm) / total
    rows.append(f"{'accuracy':>{width}}{'':>20}" + num.format(acc) + f"{total:>10}")
    w = s / total
    for label, agg in (("macro avg", np.mean), ("weighted avg", lambda v: float(np.sum(v * w)))):
        rows.append(f"{label:>{width}}" + "".join(num.format(agg(v)) for v in (p, r, f)) + f"{total:>10}")
    return "\n".join(rows)
