"""Images read from their files only when indexed, through a torch DataLoader (worker processes, pinned memory on a
GPU machine): what an imagefolder holds instead of one tensor, so that a run's memory is bounded by its shard, not
by the data set's size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.utils.data import DataLoader, Dataset

from nte_eval.errors import NTEError

CHUNK = 64  # images per DataLoader batch


class _Files(Dataset):
    """The prepared image of each file, or the error message of a file that does not decode (raised by the caller,
    so that the message is not wrapped in a worker's traceback)."""

    def __init__(self, paths: list[Path], prepare: Callable[[Path], torch.Tensor]):
        self.paths, self.prepare = paths, prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            return self.prepare(self.paths[i])
        except NTEError as e:
            return str(e)


@contextmanager
def opened(path: Path | BinaryIO, name: str | None = None) -> Iterator[Any]:
    """An image file (or open binary stream called ``name``) opened with PIL; one that does not decode, here or while
    it is read in the ``with`` block, is an NTEError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise NTEError(f"cannot read image {name or path}: it does not decode to an image ({e}). Remove or replace "
                       "it.") from None


class TransformFile:
    """Read one image file and apply ``transform`` (a PIL image -> (C, H, W) float tensor in [0, 1]; e.g. a model's
    own evaluation resize and crop); a file that does not decode is an NTEError naming it."""

    def __init__(self, transform: Callable, channels: int = 3):
        self.transform, self.channels = transform, channels

    def __call__(self, path: Path) -> torch.Tensor:
        with opened(path) as image:
            image = image.convert("RGB" if self.channels == 3 else "L")
        return self.transform(image)


def _collate(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    errors = [x for x in items if isinstance(x, str)]
    return errors[0] if errors else torch.stack(items)


class FileImages:
    """(N, C, H, W) float images in [0, 1], one file each, read when indexed (an int, a slice, a list of positions):
    ``prepare(path)`` reads and sizes one file. ``workers``: DataLoader worker processes (0: read in this process)."""

    def __init__(self, paths: list[Path], shape: tuple[int, int, int], prepare: Callable[[Path], torch.Tensor],
                 workers: int = 0):
        self.paths, self.prepare, self.workers = list(paths), prepare, workers
        self.shape = torch.Size((len(self.paths), *shape))
        self.dtype = torch.float32

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        positions = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        paths = [self.paths[i] for i in positions]
        if not paths:
            return torch.empty(0, *self.shape[1:])
        loader = DataLoader(_Files(paths, self.prepare), batch_size=CHUNK, num_workers=min(self.workers, len(paths)),
                            collate_fn=_collate, pin_memory=torch.cuda.is_available())
        chunks = []
        for chunk in loader:
            if isinstance(chunk, str):
                raise NTEError(chunk)
            chunks.append(chunk)
        return torch.cat(chunks)
