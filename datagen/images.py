"""Images of prompts: reading them from a prompt source, checking them, and the run's image store.

A prompt row names its images in one field (``prompts.images_field``; by default ``images``, else
``image``): one image or a list, each a file path (relative to the prompt file's folder), the
bytes themselves (a Parquet binary column), or an HF ``datasets`` Image value (``{"bytes", "path"}``,
or a decoded picture). Every image is opened and fully decoded when the prompts are read, so an
unreadable, missing or truncated one stops the run there with its file and line (or row) named.
A URL is refused: nothing is downloaded.

The store (``RUN_DIR/images/``, local or on object storage) holds each distinct image once, under
its id (``datagen.records.image_id``), as the original file's bytes. The generate stage fills it
before its first shard; every later stage reads from it by id. Readers keep a small cache of
decoded pictures, so a prompt's n samples and two attempts decode its image once.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from datagen import storage
from datagen.records import ImageSource, image_id
from datagen.storage import Location

STORE = "images"  # RUN_DIR/images/


class ImageError(ValueError):
    """An image that cannot be used; the message says which and why (the caller adds where)."""


def store_location(run_dir: str | os.PathLike[str] | Location) -> Location:
    """The image store of a run: ``RUN_DIR/images``."""
    run = storage.as_location(run_dir)
    return (run.expanduser() if isinstance(run, Path) else run) / STORE


def _decode(data: bytes, what: str) -> tuple[str, int, int]:
    """(format, width, height) of an image file's bytes, decoding every pixel; ``ImageError`` if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # a truncated or corrupt file fails here, not in a worker later
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what}: not a readable image ({type(e).__name__}: {e})") from None
    if not fmt or width < 1 or height < 1:
        raise ImageError(f"{what}: not a readable image (no format or an empty picture)")
    return fmt.lower(), width, height


def _from_path(value: str, base: Path | None) -> ImageSource:
    if "://" in value:
        raise ImageError(f"image {value!r}: a URL; give a local file (images are not downloaded)")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"image {value!r}: cannot read {path}: {e.strerror or e}") from None
    fmt, width, height = _decode(data, f"image {value!r} ({path})")
    return ImageSource(image_id(data, fmt), width, height, path=str(path.resolve()))


def from_bytes(data: bytes, what: str = "image bytes") -> ImageSource:
    """An image held in memory (a Parquet cell, a decoded dataset value, the built-in task's drawing)."""
    fmt, width, height = _decode(data, what)
    return ImageSource(image_id(data, fmt), width, height, data=bytes(data))


def _from_picture(img: Any) -> ImageSource:
    """A decoded picture (an HF dataset's Image value): its original file if it names one, else PNG."""
    filename = getattr(img, "filename", "")
    if filename and Path(filename).is_file():
        return _from_path(filename, None)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return from_bytes(buf.getvalue(), "decoded image")


def read_image(value: Any, base: Path | None) -> ImageSource:
    """One image value of a prompt row, read and checked (``ImageError`` says what is wrong)."""
    if isinstance(value, str):
        if not value.strip():
            raise ImageError("an empty image path")
        return _from_path(value, base)
    if isinstance(value, bytes | bytearray | memoryview):
        return from_bytes(bytes(value))
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        if value.get("bytes"):
            return from_bytes(bytes(value["bytes"]), f"image bytes of {value.get('path') or 'the row'}")
        if value.get("path"):
            return _from_path(str(value["path"]), base)
        raise ImageError("an image value with neither bytes nor a path")
    if hasattr(value, "save") and hasattr(value, "size"):
        return _from_picture(value)
    raise ImageError(
        f"an image must be a file path, bytes, or {{'bytes', 'path'}} (an HF Image value); got {type(value).__name__}"
    )


def read_images(value: Any, base: Path | None) -> tuple[ImageSource, ...]:
    """The images of one row's image field: none (null or []), one, or a list."""
    if value is None:
        return ()
    values = list(value) if isinstance(value, list | tuple) else [value]
    out = []
    for i, v in enumerate(values):
        try:
            out.append(read_image(v, base))
        except ImageError as e:
            raise ImageError(f"{e}" if len(values) == 1 else f"image {i + 1} of {len(values)}: {e}") from None
    return tuple(out)


class ImageStore:
    """The run's images by id: written once each, read (and decoded) on demand."""

    def __init__(self, root: str | os.PathLike[str] | Location, cache_size: int = 256):
        self.root = storage.as_location(root)
        self._pictures: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size

    def put(self, sources: list[ImageSource]) -> int:
        """Store every image not there yet (each file whole, or not at all); how many were written."""
        unique = {s.image_id: s for s in sources}
        if not unique:
            return 0
        storage.makedirs(self.root)
        have = set(storage.list_names(self.root))
        written = 0
        for iid, source in unique.items():
            if iid not in have:
                storage.write_bytes(self.root / iid, source.read())
                written += 1
        return written

    def missing(self, ids: list[str]) -> list[str]:
        have = set(storage.list_names(self.root))
        return sorted({i for i in ids if i not in have})

    def read(self, iid: str) -> bytes:
        try:
            return storage.read_bytes(self.root / iid)
        except (OSError, FileNotFoundError) as e:
            raise ImageError(f"image {iid} is not in the image store {self.root}: {e}") from None

    def picture(self, iid: str) -> Any:
        """The decoded RGB picture of an image (cached: the most recent ``cache_size`` stay decoded)."""
        from PIL import Image

        if iid in self._pictures:
            self._pictures.move_to_end(iid)
            return self._pictures[iid]
        with Image.open(io.BytesIO(self.read(iid))) as img:
            picture = img.convert("RGB")
        self._pictures[iid] = picture
        if len(self._pictures) > self._cache_size:
            self._pictures.popitem(last=False)
        return picture

    def pictures(self, ids: list[str] | tuple[str, ...]) -> list[Any]:
        return [self.picture(i) for i in ids]

