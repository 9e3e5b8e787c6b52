"""Datasets, loaders and batch transforms.

Datasets give uint8 images ((N, H, W) grey, (N, C, H, W) colour), int64 labels
and class names; :class:`DataLoader` turns them into float32 NCHW batches, with
seeded, vectorized transforms from :mod:`minicnn.data.transforms`.
"""
from . import transforms
from .archive import UnsafeArchiveError, extract_archive
from .cifar10 import CIFAR10
from .dataset import ArrayDataset
from .download import DownloadError, data_root, download
from .fashion_mnist import FashionMNIST
from .image import load_image
from .image_folder import ImageFolder
from .loader import DataLoader, train_val_split
from .preprocess import Preprocess

__all__ = ["ArrayDataset", "CIFAR10", "DataLoader", "DownloadError", "FashionMNIST",
           "ImageFolder", "Preprocess", "UnsafeArchiveError", "data_root", "download", "extract_archive",
           "load_image", "train_val_split", "transforms"]
