"""Datasets for training tasks: image folders, in-memory arrays, and the bundled digits data.

Whatever the source, a dataset reaches training as a :class:`TaskData`: class labels, a training
split and a validation split of *untransformed* images, and the timm data config (input size,
mean, std, interpolation, crop) the images are prepared with. Transforms come from
``timm.data.create_transform``: RandomResizedCrop + horizontal flip for training (the paper's
augmentation), resize + center crop for evaluation. Without augmentation the training split uses
the evaluation transform, which makes every sample deterministic (what the prefix cache of
:mod:`subtune_edge.train` relies on).

Sources, as named by a :class:`DataSpec` (``--data`` on the command line):

``digits:digit`` / ``digits:parity`` / ``digits:ge5``
    scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to the backbone's input size, with
    three targets that make three distinct tasks: the digit (10 classes), odd/even, and >= 5.
``digits-c:TARGET[:CORRUPTION[:SEVERITY]]``
    the same digits after upscaling corrupted as CIFAR-10-C (:mod:`.corruptions`): gaussian_noise,
    gaussian_blur, contrast, jpeg_compression, or ``mixed`` (default: one of them per image) at
    severity 1..5 (default 3); seeded per image; the split is the clean digits'.
``skimage-textures[:N]``
    N crops per class (default 60) of ten photographs bundled with scikit-image; the class is the
    photograph; training and validation crops come from disjoint cells of each photograph (:mod:`.textures`).
a folder
    ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, or ``root/<class>/*.jpg`` split
    into train/val by a seeded, stratified fraction.

Modules: :mod:`.images` (the one safe image reader, used by training, ``predict`` and export),
:mod:`.datasets` (image sets, :class:`TaskData`), :mod:`.splits` (seeded stratified splits),
:mod:`.sources` (digits, corrupted digits, folders, arrays), :mod:`.corruptions` (the CIFAR-10-C recipe),
:mod:`.textures` (the photo crops), :mod:`.spec` (:class:`DataSpec`, :func:`load_data`).
"""

from .corruptions import CORRUPTIONS, DEFAULT_SEVERITY, MIXED, SEVERITIES, corrupt
from .datasets import ArrayImages, FolderImages, ImageSet, TaskData, check_classes, task_data_config
from .images import FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS, check_image, is_image_file, list_images, read_image, to_rgb
from .sources import (
    DIGITS_C_PREFIX,
    DIGITS_PREFIX,
    DIGITS_TARGETS,
    digits,
    digits_c,
    digits_sources,
    from_arrays,
    image_folder,
    named_sources,
    parse_digits_c,
)
from .spec import DataSpec, canonical_source, kfold, limit_train, load_data, spec_key
from .splits import stratified_folds, stratified_sample, stratified_split
from .textures import TEXTURE_PHOTOS, TEXTURES_PREFIX, parse_textures, skimage_textures, texture_cells

__all__ = [
    "ArrayImages", "FolderImages", "ImageSet", "TaskData", "check_classes", "task_data_config",
    "FORMATS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "check_image", "is_image_file", "list_images", "read_image", "to_rgb",
    "CORRUPTIONS", "DEFAULT_SEVERITY", "MIXED", "SEVERITIES", "corrupt",
    "DIGITS_C_PREFIX", "DIGITS_PREFIX", "DIGITS_TARGETS", "digits", "digits_c", "digits_sources", "from_arrays",
    "image_folder", "named_sources", "parse_digits_c",
    "DataSpec", "canonical_source", "kfold", "limit_train", "load_data", "spec_key",
    "stratified_folds", "stratified_sample", "stratified_split",
    "TEXTURE_PHOTOS", "TEXTURES_PREFIX", "parse_textures", "skimage_textures", "texture_cells",
]
