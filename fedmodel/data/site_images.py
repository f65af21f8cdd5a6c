"""A site's own images, read into a declared image task.

Layout (``format = "image-folder"``): ``path/<class name>/<image>``, one folder per class named
exactly as the task's ``classes``; a ``test_path`` in the same layout, or a seeded stratified
``test_fraction`` held out of ``path``.

Every image becomes what the task declares, by rules fixed before any site has an image:
converted to the declared channels, resized by the declared rule, pixels scaled by the mode's
full range to [-1, 1] (``x / 127.5 - 1`` for 8-bit). Nothing is fitted to a site's images (no
mean, no standard deviation), so no site's pixels shape another site's model.

The dataset is lazy: it holds file names and labels, and opens an image only when a row is
asked for, so memory does not grow with the folder. Before training, and in ``fedmodel data
check``, every file is opened and verified (header and checksums, no pixels kept); problems are
:class:`~fedmodel.data.site.Problem` lines naming the file, never its content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from fedmodel.data.errors import SiteDataError
from fedmodel.data.site import Problem, Problems
from fedmodel.data.split import holdout_split
from fedmodel.task import ImageSpec, SiteFiles, TaskConfig

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "P"})
ACCEPTED_MODES = {1: GRAY_MODES, 3: COLOUR_MODES}
FULL_SCALE = {"I": 65535.0, "F": 255.0}
"""The declared full range of a mode after channel conversion (8-bit modes: 255). 16-bit
images (``I;16``, and ``I`` as Pillow opens 16-bit PNGs) are read as 0..65535, float images as
0..255 (Pillow's own range for ``L``); values outside are clipped."""
_RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds: image files (absolute), their class indices, and problems."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    problems: list[Problem]


class ImageFolderDataset(Dataset):
    """``(float32 C x H x W in [-1, 1], int64 label)`` per image, decoded on each access.

    Nothing is cached: a pass over a folder of any size holds one image at a time (per loader
    worker). ``labels`` is a plain array so label counts and stratified splits never decode an
    image.
    """

    def __init__(self, files: list[Path], labels: np.ndarray, spec: ImageSpec) -> None:
        if len(files) != len(labels):
            raise ValueError("one label per file")
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                pixels = image_tensor(img, self.spec)
        except Exception as err:  # a file changed or broke after the check: name it, no trace
            what = f"{path}: unreadable image ({type(err).__name__})"
            raise SiteDataError(what, column=None) from None
        return pixels, torch.tensor(self.labels[index], dtype=torch.int64)

    def subset(self, rows: np.ndarray) -> ImageFolderDataset:
        """The same images at ``rows``, still lazy and still carrying their labels."""
        return ImageFolderDataset([self.files[i] for i in rows], self.labels[rows], self.spec)


def image_tensor(img: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """One opened image as the task declares it: channels, size, then scaling to [-1, 1]."""
    img = to_channels(img, spec.channels)
    img = resized(img, spec)
    array = np.asarray(img, dtype=np.float32)
    full = FULL_SCALE.get(img.mode, 255.0)
    array = np.clip(array, 0.0, full) * (2.0 / full) - 1.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # H x W (x C) -> C x H x W
    return torch.from_numpy(np.ascontiguousarray(array))


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Colour to RGB (alpha dropped, palettes expanded); gray to L, keeping 16-bit and float
    images at their depth (``I`` / ``F``) so converting does not clip them at 255."""
    if channels == 3:
        return img if img.mode == "RGB" else img.convert("RGB")
    if img.mode in ("I", "I;16"):
        return img if img.mode == "I" else img.convert("I")
    if img.mode == "F":
        return img
    return img if img.mode == "L" else img.convert("L")


def resized(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """The declared rule: ``stretch`` to H x W; ``fit`` inside it keeping the aspect ratio,
    padded with black; ``crop`` to cover it keeping the aspect ratio, centre cut."""
    size = (spec.width, spec.height)  # Pillow counts width first
    if img.size == size:
        return img
    if spec.resize == "stretch":
        return img.resize(size, _RESAMPLE)
    if spec.resize == "crop":
        return ImageOps.fit(img, size, method=_RESAMPLE, centering=(0.5, 0.5))
    black = (0, 0, 0) if img.mode == "RGB" else 0
    return ImageOps.pad(img, size, method=_RESAMPLE, color=black, centering=(0.5, 0.5))


def mode_problem(mode: str, channels: int) -> str | None:
    """Why an image of ``mode`` cannot feed a ``channels`` task, or None if it can. Gray and
    colour never cross silently: the declaration says which the task is."""
    if mode in ACCEPTED_MODES[channels]:
        return None
    if channels == 1 and mode in COLOUR_MODES:
        return f"colour image (mode {mode}) in a 1-channel task"
    if channels == 3 and mode in GRAY_MODES:
        return f"grayscale image (mode {mode}) in a 3-channel task"
    return f"image mode {mode} is not supported (save it as RGB or grayscale)"


def verify_image(path: Path, channels: int) -> tuple[str, str] | None:
    """(kind, what) if ``path`` is not an image this task can read. Opens the header and runs
    Pillow's ``verify`` (structure and checksums); no pixels are decoded or kept."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.verify()
    except Exception as err:  # any decoder failure on a hostile file is one line, not a trace
        return "unreadable", f"not a readable image ({type(err).__name__})"
    why = mode_problem(mode, channels)
    return None if why is None else (f"mode {mode}", why)


def scan_folder(task: TaskConfig, root: Path, verify: bool = True) -> FolderScan:
    """Every image under ``root``'s class folders, and what is wrong with the folder."""
    assert task.image is not None
    problems = Problems()
    files: list[Path] = []
    labels: list[int] = []
    if not root.is_dir():
        problems.add(Problem(root, None, None, "no such folder"), "missing")
        return FolderScan(root, files, np.zeros(0, np.int64), problems.found)
    index = {name: i for i, name in enumerate(task.classes)}
    for entry in _visible(root):
        if not entry.is_dir():
            problems.add(
                Problem(Path(entry.path), None, None, "file outside the class folders (put each "
                        "image in the folder named by its class)"), "stray")  # fmt: skip
        elif entry.name not in index:
            problems.add(
                Problem(Path(entry.path), None, None, "class folder not in the task's classes"),
                f"class {entry.name}",
            )
        else:
            for path in _class_images(Path(entry.path), problems):
                files.append(path)
                labels.append(index[entry.name])
    if verify:
        for path in files:
            if (found := verify_image(path, task.image.channels)) is not None:
                problems.add(Problem(path, None, None, found[1]), found[0])
    if not files:
        problems.add(Problem(root, None, None, "no images in the class folders"), "empty")
    return FolderScan(root, files, np.asarray(labels, dtype=np.int64), problems.found)


def _visible(folder: Path) -> list[os.DirEntry]:
    """Entries in name order (a split is reproducible), hidden ones (.DS_Store) skipped."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_images(folder: Path, problems: Problems) -> list[Path]:
    found = []
    for entry in _visible(folder):
        path = Path(entry.path)
        if entry.is_dir():
            problems.add(
                Problem(path, None, None, "folder inside a class folder (images sit directly "
                        "in their class folder)"), "nested")  # fmt: skip
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.add(
                Problem(path, None, None, f"not an image file (suffix {path.suffix or 'none'}; "
                        f"images are {', '.join(sorted(IMAGE_SUFFIXES))})"), "suffix")  # fmt: skip
        else:
            found.append(path)
    return found


def image_splits(task: TaskConfig, files: SiteFiles) -> tuple[ImageFolderDataset, ...]:
    """(train, test) lazy datasets; the first problem in either folder is a ``SiteDataError``."""
    assert task.image is not None
    train = _checked(scan_folder(task, files.path))
    if files.test_path is not None:
        test = _checked(scan_folder(task, files.test_path))
        train_set = ImageFolderDataset(train.files, train.labels, task.image)
        test_set = ImageFolderDataset(test.files, test.labels, task.image)
    else:
        everything = ImageFolderDataset(train.files, train.labels, task.image)
        train_rows, test_rows = holdout_split(train.labels, files.test_fraction, files.seed)
        train_set, test_set = everything.subset(train_rows), everything.subset(test_rows)
    if len(train_set) == 0:
        raise SiteDataError(f"{files.path}: no training images", column=None)
    return train_set, test_set


def _checked(scan: FolderScan) -> FolderScan:
    if scan.problems:
        raise SiteDataError(scan.problems[0].line(), column=None)
    return scan
