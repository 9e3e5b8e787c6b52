"""TensorBoard: the training written as TensorBoard event files (optional extra).

    pip install "minicnn[tensorboard]"     # the tensorboard package: its event writer and viewer
    fit(model, data, ..., callbacks=[TensorBoard("runs/fashion", samples=(x[:8], y[:8]),
                                                 grad_cam_layer="6", class_names=names)])
    tensorboard --logdir runs                # then open the address it prints

What is written, step = epoch (from 0, as Keras does) unless said otherwise:

    scalars     every number of the epoch logs: loss, accuracy, val_loss, val_accuracy, lr, time;
                with ``update_freq=N`` also ``batch/loss`` every N training steps (step = global step)
    histograms  every ``histogram_freq`` epochs: ``weights/<name>`` and ``gradients/<name>``
                (the gradient of the epoch's last batch) for every parameter
    images      ``confusion_matrix`` on the validation data (when there is some) and, with
                ``samples`` and ``grad_cam_layer``, ``grad_cam`` of those fixed images

Only TensorBoard's own writer is used (no TensorFlow).  Like LayerMonitor it
implements the callback hooks itself, so ``callbacks`` re-exports it without a cycle.
"""
import io
import time
from pathlib import Path

import numpy as np

from ..attribution import explaining, grad_cam
from ..tensor import Tensor, no_grad
from .metrics import confusion_matrix

INSTALL_HINT = ('the TensorBoard callback writes with the "tensorboard" package (no TensorFlow needed); '
                'install it with\n    pip install "minicnn[tensorboard]"\nor  pip install tensorboard')


def _tensorboard():
    """(EventFileWriter, event_pb2, summary_pb2) from the tensorboard package."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ModuleNotFoundError(INSTALL_HINT) from None
    return EventFileWriter, event_pb2, summary_pb2


class TensorBoard:
    """Write scalars, histograms and images per epoch to event files in ``log_dir``.

    histogram_freq: epochs between weight and gradient histograms (0: none; default 1).
    update_freq: "epoch" (default), or N to add ``batch/loss`` every N steps.
    samples: fixed (images as the model takes them, labels) whose Grad-CAM at ``grad_cam_layer`` is drawn each epoch.
    class_names: labels of the confusion matrix and the Grad-CAM captions (default 0..C-1).
    """
    main_process_only = True      # writes files: rank 0 alone, under minicnn.distributed

    def __init__(self, log_dir, histogram_freq=1, update_freq="epoch", samples=None, grad_cam_layer=None,
                 class_names=None):
        self._writer_class, self._event, self._summary = _tensorboard()
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch' or a positive int, got {update_freq!r}")
        if (samples is None) != (grad_cam_layer is None):
            raise ValueError("TensorBoard: Grad-CAM images need both samples=(images, labels) and grad_cam_layer")
        self.log_dir, self.histogram_freq, self.update_freq = Path(log_dir), int(histogram_freq), update_freq
        self.samples, self.grad_cam_layer, self.class_names = samples, grad_cam_layer, class_names
        self.writer, self.step = None, 0

    # ---------------------------------------------------------------- writing
    def _write(self, step, **value):
        event = self._event.Event(wall_time=time.time(), step=int(step),
                                  summary=self._summary.Summary(value=[self._summary.Summary.Value(**value)]))
        self.writer.add_event(event)

    def scalar(self, tag, value, step):
        self._write(step, tag=tag, simple_value=float(value))

    def histogram(self, tag, values, step, bins=30):
        v = np.asarray(values, dtype=np.float64).ravel()
        counts, edges = np.histogram(v, bins=bins)
        histo = self._summary.HistogramProto(min=float(v.min()), max=float(v.max()), num=v.size,
                                             sum=float(v.sum()), sum_squares=float(np.dot(v, v)),
                                             bucket_limit=edges[1:].tolist(), bucket=counts.tolist())
        self._write(step, tag=tag, histo=histo)

    def image(self, tag, png, step):
        """``png``: the bytes of a PNG file."""
        from PIL import Image
        width, height = Image.open(io.BytesIO(png)).size
        self._write(step, tag=tag, image=self._summary.Summary.Image(height=height, width=width, colorspace=4,
                                                                     encoded_image_string=png))

    # -------------------------------------------------------------- callbacks
    def on_train_begin(self, trainer):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = self._writer_class(str(self.log_dir))
        self.step = trainer.epoch * len(trainer.train_loader)

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_batch_end(self, trainer, batch, logs):
        if self.update_freq != "epoch" and self.step % self.update_freq == 0:
            self.scalar("batch/loss", logs["loss"], self.step)
        self.step += 1

    def on_epoch_end(self, trainer, epoch, logs):
        for name, value in logs.items():
            self.scalar(name, value, epoch)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            for name, p in trainer.model.named_parameters():
                self.histogram(f"weights/{name}", p.data, epoch)
                if p.grad is not None:
                    self.histogram(f"gradients/{name}", p.grad, epoch)
        if trainer.val_loader is not None:
            self.image("confusion_matrix", self._confusion_png(trainer.model, trainer.val_loader), epoch)
        if self.samples is not None:
            self.image("grad_cam", self._grad_cam_png(trainer.model), epoch)
        self.writer.flush()

    def on_train_end(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    # ----------------------------------------------------------------- images
    def _names(self, classes):
        return list(self.class_names) if self.class_names is not None else [str(c) for c in range(classes)]

    def _confusion_png(self, model, loader):
        from ..viz import plot_confusion_matrix
        truth, logits = [], []
        with explaining(model), no_grad():
            for x, y in loader:
                logits.append(model(Tensor(x)).data)
                truth.append(y)
        logits = np.concatenate(logits)
        cm = confusion_matrix(np.concatenate(truth), logits.argmax(1), num_classes=logits.shape[1])
        return plot_confusion_matrix(cm, self._names(logits.shape[1]), io.BytesIO()).getvalue()

    def _grad_cam_png(self, model):
        from ..viz import plot_attributions
        images, labels = self.samples
        with explaining(model), no_grad():
            logits = model(Tensor(images)).data
        names = self._names(logits.shape[1])
        captions = [f"{names[t]} → {names[p]}" for t, p in zip(labels, logits.argmax(1))]
        cams = grad_cam(model, images, self.grad_cam_layer, target=np.asarray(labels))
        return plot_attributions(images, {f"Grad-CAM ({self.grad_cam_layer}), true class": cams}, io.BytesIO(),
                                 row_labels=captions).getvalue()
