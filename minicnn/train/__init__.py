"""Training: fit / evaluate / predict, History, callbacks, metrics, progress, summary."""
from .callbacks import (Callback, CSVLogger, EarlyStopping, LayerMonitor, LearningRateScheduler, ModelCheckpoint,
                        ReduceLROnPlateau, TensorBoard, TerminateOnNaN)
from .history import History
from .loop import Trainer, evaluate, fit
from .predict import predict, predict_image
from .metrics import (accuracy, classification_report, confusion_matrix, precision_recall_f1,
                      top_k_accuracy)
from .summary import summary
