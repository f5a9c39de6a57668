"""The plain, picklable name of a dataset (:class:`DataSpec`) and the one function that builds it.

A spec names a dataset completely (source, resolution, splits, sample sizes, fold), so a worker
process, a Ray task or a resumed search rebuilds exactly the same :class:`TaskData` from a few
JSON fields instead of shipping images around.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..docs import documented
from ..errors import DataError
from .datasets import TaskData, check_classes, task_data_config
from .sources import DIGITS_C_PREFIX, DIGITS_PREFIX, digits, digits_c, image_folder, parse_digits_c
from .splits import stratified_folds, stratified_sample
from .textures import TEXTURES_PREFIX, parse_textures, skimage_textures

log = logging.getLogger(__name__)


def _named(source: str, prefix: str) -> bool:
    return source == prefix or source.startswith(prefix + ":")


def canonical_source(source: str) -> str:
    """``source`` with the defaults of a named source written out (``digits-c:digit`` -> ``digits-c:digit:mixed:3``).

    So that a spec's JSON, and every key and hash made from it (run logs, caches), names the
    corruption, severity and crop count, and equal data has one name. Folders and ``digits:``
    are returned as given.

    Args:
        source: a data source as written.

    Returns:
        The canonical spelling.

    Raises:
        DataError: a ``digits-c`` or ``skimage-textures`` spec that is malformed.
    """
    if not isinstance(source, str):
        return source
    if _named(source, DIGITS_C_PREFIX):
        target, corruption, severity = parse_digits_c(source)
        return f"{DIGITS_C_PREFIX}:{target}:{corruption}:{severity}"
    if _named(source, TEXTURES_PREFIX):
        return f"{TEXTURES_PREFIX}:{parse_textures(source)}"
    return source


@documented
@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a :class:`TaskData`, so another process can rebuild it exactly.

    ``folds``/``fold`` replace the validation split by fold ``fold`` of a stratified k-fold split
    of the training split (the held-out validation split is then not used at all). The source is
    stored in its :func:`canonical_source` spelling; a malformed named source is refused here.

    Raises:
        DataError: a malformed ``digits-c`` or ``skimage-textures`` source.
    """

    source: str = field(metadata={"help": "An image folder, or digits:TARGET (digit, parity, ge5), "
                                          "digits-c:TARGET[:CORRUPTION[:SEVERITY]] or skimage-textures[:N]."})
    input_size: tuple[int, int] | None = field(default=None, metadata={
        "help": "(H, W) to prepare images at; None: the backbone's pretrained config."})
    val_fraction: float = field(default=0.2, metadata={
        "help": "Share of each class held out for validation where the data has no val/ folder."})
    split_seed: int = field(default=0, metadata={"help": "Seed of every split and sample drawn from the data."})
    train_samples: int | None = field(default=None, metadata={
        "help": "Keep a stratified subset of this many training samples (small-data studies)."})
    folds: int = field(default=0, metadata={"help": "k of a k-fold validation over the training split; 0: off."})
    fold: int | None = field(default=None, metadata={"help": "Which fold (0..folds-1) validates, with folds."})
    val_samples: int | None = field(default=None, metadata={
        "help": "Keep a stratified subset of this many validation samples (quicker searches)."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", canonical_source(self.source))

    def with_fold(self, fold: int | None) -> DataSpec:
        """The same data, validated on another fold."""
        return replace(self, fold=fold)

    def to_json(self) -> dict:
        """The spec as JSON-able fields (what run logs and worker messages carry)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> DataSpec:
        """The spec :meth:`to_json` wrote.

        Args:
            d: the JSON fields.

        Returns:
            The spec.
        """
        d = dict(d)
        if d.get("input_size"):
            d["input_size"] = tuple(int(v) for v in d["input_size"])
        return cls(**d)


def load_data(spec: DataSpec | str, data_config: dict) -> TaskData:
    """Build the :class:`TaskData` that ``spec`` names, prepared with a backbone's data config.

    Args:
        spec: a :class:`DataSpec`, or just its source (an image folder, ``digits:parity``,
            ``digits-c:digit:contrast:3``, ``skimage-textures:60``).
        data_config: the backbone's timm data config; ``spec.input_size`` overrides its resolution.

    Returns:
        The labels, both splits (sampled, folded as the spec says) and the preprocessing.

    Raises:
        DataError: the source does not exist or cannot be trained on (see :func:`image_folder`,
            :func:`digits`, :func:`digits_c`, :func:`skimage_textures`), or the samples / fold asked
            for do not fit the data.
    """
    if isinstance(spec, str):
        spec = DataSpec(spec)
    cfg = task_data_config(data_config, spec.input_size)
    if _named(spec.source, DIGITS_PREFIX):
        data = digits(spec.source.partition(":")[2] or "digit", cfg, spec.val_fraction, spec.split_seed)
    elif _named(spec.source, DIGITS_C_PREFIX):
        target, corruption, severity = parse_digits_c(spec.source)
        data = digits_c(target, cfg, corruption, severity, spec.val_fraction, spec.split_seed)
    elif _named(spec.source, TEXTURES_PREFIX):
        data = skimage_textures(parse_textures(spec.source), cfg, spec.val_fraction, spec.split_seed)
    else:
        data = image_folder(spec.source, cfg, spec.val_fraction, spec.split_seed)
    if spec.train_samples is not None:
        data = limit_train(data, spec.train_samples, spec.split_seed)
    if spec.val_samples is not None and spec.val_samples < len(data.val):
        idx = stratified_sample(data.val.targets, spec.val_samples, spec.split_seed)
        data = replace(data, val=data.val.subset(idx, f"n{spec.val_samples}s{spec.split_seed}"))
    if spec.folds:
        if spec.fold is None or not 0 <= spec.fold < spec.folds:
            raise DataError(f"fold {spec.fold} is not one of 0..{spec.folds - 1}")
        data = kfold(data, spec.folds, spec.fold, spec.split_seed)
    log.debug("loaded %s: %d train, %d val, %d classes", spec.source, len(data.train), len(data.val),
              data.num_classes)
    return data


def limit_train(data: TaskData, n: int, seed: int) -> TaskData:
    """Keep a stratified ``n`` of the training split.

    Args:
        data: the dataset.
        n: how many training samples to keep, at least one per class.
        seed: the sample's seed.

    Returns:
        ``data`` with the smaller training split.

    Raises:
        DataError: ``n`` below the number of classes.
    """
    if n < data.num_classes:
        raise DataError(f"{n} training samples cannot cover {data.num_classes} classes; set {{param}} to at least "
                        f"{data.num_classes}", param="train_samples")
    idx = stratified_sample(data.train.targets, n, seed)
    return replace(data, train=data.train.subset(idx, f"n{n}s{seed}"))


def kfold(data: TaskData, k: int, fold: int, seed: int) -> TaskData:
    """Fold ``fold`` of ``k`` over the training split: train on the other folds, validate on this one.

    Args:
        data: the dataset.
        k: the number of folds.
        fold: the validating fold, 0..k-1.
        seed: the folds' seed.

    Returns:
        ``data`` with both splits cut from its training split.

    Raises:
        DataError: ``k`` below 2, or a class left without training samples.
    """
    folds = stratified_folds(data.train.targets, k, seed)
    held = folds[fold]
    rest = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != fold]))
    train = data.train.subset(rest, f"k{k}f{fold}s{seed}t")
    check_classes(data.labels, train.targets, f"{data.source} (fold {fold} of {k})")
    return replace(data, train=train, val=data.train.subset(held, f"k{k}f{fold}s{seed}v"))


def spec_key(spec: DataSpec, data_config: dict) -> str:
    """A string that names the data ``load_data(spec, data_config)`` builds (for per-process caches).

    Args:
        spec: the dataset's spec.
        data_config: the backbone's data config.

    Returns:
        Equal strings for equal data.
    """
    return json.dumps([spec.to_json(), task_data_config(data_config, None)], sort_keys=True, default=str)
