"""Tools for looking at data, layers and training."""
from .augment import augmentation_grid
from .training import plot_confusion_matrix, plot_history, plot_misclassified
from .internals import plot_activation_stats, plot_depth_study, plot_feature_maps, plot_filters, plot_norm_axes
from .attribution import plot_attributions
from .layer_monitor import plot_layer_monitor
