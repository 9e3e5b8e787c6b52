"""Tools for looking at data, layers and training."""
from .augment import augmentation_grid
from .training import plot_confusion_matrix, plot_history, plot_misclassified
