"""Image folders larger than memory: files listed, decoded once to fit the per-channel statistics (and the
data's fingerprint), then decoded again on the fly while training (training/image_batches.py, in DataLoader
worker processes) and for evaluation. Nothing but the file list and the labels stays in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from trainfer.config import DataConfig
from trainfer.data.files import image_files
from trainfer.data.split import Split, split_indices
from trainfer.data.streaming import StreamedDataset, distinct, encode
from trainfer.errors import DataError, InputError
from trainfer.features import Features, ImageFeatures, Target
from trainfer.features.image import PixelSums, read_image


class ImageFiles:
    """A split's image files, decoded and normalized on demand: ``X[a:b]`` and ``decode(i)`` give float32 NCHW."""

    def __init__(self, paths: list[str], features: ImageFeatures) -> None:
        self.paths, self.features = paths, features
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), *self.features.input_shape)

    def decode(self, i: int) -> np.ndarray:
        return self.features.transform(_read(self.paths[i], self.features.size)[None])[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("image files are read in contiguous slices")
        start, stop, _ = key.indices(len(self.paths))
        images = np.stack([_read(p, self.features.size) for p in self.paths[start:stop]]) if stop > start else \
            np.zeros((0, self.features.size, self.features.size, 3), dtype=np.uint8)
        return self.features.transform(images)


def _read(path: str, size: int) -> np.ndarray:
    try:
        return read_image(path, size)
    except InputError as exc:
        raise DataError(exc.message, hint="remove or replace the corrupt file") from None


def prepare_image_stream(cfg: DataConfig, seed: int, root: Path, split: Split | None,
                         splits: tuple[str, ...]) -> Any:
    """``data.prepare`` for an image folder (root/<class>/*.png) that is streamed."""
    from trainfer.data import Prepared, check_targets, resolve_task

    if cfg.options or cfg.target is not None or cfg.drop:
        raise DataError(f"{root.name} is an image folder: data.options, data.target and data.drop do not apply",
                        hint="remove them; the labels are the folder names")
    files, labels = image_files(root)
    y_raw = np.asarray(labels, dtype=object)
    ds = StreamedDataset(root.name, "image", None, y_raw, target="label",
                         ids=np.asarray([str(f.relative_to(root)) for f in files], dtype=object), id_column="path")
    task = resolve_task(cfg, ds)
    ds.y = check_targets(ds, task)
    target = Target.fit(distinct(ds.y), task, "label")
    if split is None:
        split = split_indices(ds.y, cfg.val_fraction, cfg.test_fraction, seed, stratify=task == "classification")
    # One pass over every file: the fingerprint (the bytes the in-memory loader hashes), the train split's sums.
    h, sums, train = hashlib.sha256(), PixelSums(), set(split.train.tolist())
    for i, f in enumerate(files):
        img = _read(str(f), cfg.image_size)
        h.update(img.tobytes())
        if i in train:
            sums.add(img)
    h.update("\x1f".join(map(str, y_raw.tolist())).encode())
    ds.streamed_fingerprint = h.hexdigest()
    inputs = sums.features(cfg.image_size)
    features = Features(inputs, target, "path")
    paths = [str(f) for f in files]
    X = {name: ImageFiles([paths[i] for i in getattr(split, name)], inputs) for name in splits}
    y = {name: encode(target, ds.y[getattr(split, name)]) for name in splits}
    return Prepared(ds, features, split, X, y)  # type: ignore[arg-type]
