"""Where a run's files live: a local folder, or object storage (``s3://bucket/prefix``, or any URI
``pyarrow.fs.FileSystem.from_uri`` resolves).

A local path stays a ``pathlib.Path`` and is written exactly as before: a hidden temporary file,
fsync, rename. A URI becomes an ``ObjectPath`` and goes through ``pyarrow.fs``. Object storage has no
atomic rename (a rename there is a copy and a delete), so atomicity rests on three facts instead:

- a single PUT of a whole object (or a multipart upload, completed only on ``close``) becomes visible
  only once complete: a reader sees the previous object or the whole new one, never a part of it;
- a shard is written once under its final, deterministic name (``part-NNNNN.parquet``), serialised in
  memory first and uploaded only when whole; a writer killed before the upload completes leaves no
  object, and one that fails mid-upload never calls ``close``, so nothing is committed;
- a stage's completion marker (``_SUCCESS.json``) is written last, after every shard is in place.

Credentials come from the environment or the instance role only, as the AWS SDK finds them
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
``~/.aws``, web identity, the instance's role), never from a config file. pyarrow's S3 client does not
read ``AWS_ENDPOINT_URL`` itself; this module does (``AWS_ENDPOINT_URL_S3`` first, as the AWS CLI
does), for S3-compatible servers (MinIO, Ceph, moto).
"""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


class StorageError(ValueError):
    """A run directory on object storage that cannot be used (no bucket, no credentials, not writable)."""


def is_uri(path: Any) -> bool:
    """Whether ``path`` names object storage (``file://`` is a local path)."""
    text = str(path)
    return isinstance(path, ObjectPath) or (bool(_SCHEME.match(text)) and not text.startswith("file://"))


class ObjectPath:
    """A location on object storage, with the few ``pathlib`` operations the stages use (``/``, ``parent``,
    ``name``). Deliberately not ``os.PathLike``: ``open()`` on it would write a local file."""

    __slots__ = ("scheme", "key")

    def __init__(self, uri: str):
        m = _SCHEME.match(uri)
        if not m:
            raise ValueError(f"{uri!r} is not a URI (scheme://...)")
        self.scheme = m.group(1).lower()
        self.key = str(PurePosixPath(uri[m.end() :].strip("/")))  # "bucket/prefix/name"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str) -> ObjectPath:
        return ObjectPath(f"{self}/{part}")

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{PurePosixPath(self.key).parent}")

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]


Location = Path | ObjectPath


def as_location(path: str | os.PathLike[str] | ObjectPath) -> Location:
    """A URI as an ``ObjectPath``; anything else as the ``Path`` it always was."""
    if isinstance(path, ObjectPath | Path):
        return path
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    return ObjectPath(text) if is_uri(text) else Path(path)


def endpoint() -> str | None:
    """The S3-compatible endpoint from the environment, if one is set (``http://host:port``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.cache
def _s3(bucket: str, url: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if url:
        scheme, _, host = url.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        region = region or "us-east-1"
    elif not region:
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None  # the bucket's absence is reported by the probe, with its name
    return pafs.S3FileSystem(region=region, **kwargs)


def filesystem(path: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding ``path`` and the path within it."""
    if isinstance(path, Path):
        return pafs.LocalFileSystem(), str(path)
    if path.scheme in ("s3", "s3a"):
        return _s3(path.bucket, endpoint()), path.key
    fs, inner = pafs.FileSystem.from_uri(str(path))
    return fs, inner


def read_bytes(path: Location) -> bytes:
    if isinstance(path, Path):
        return path.read_bytes()
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def read_json(path: Location) -> Any:
    return json.loads(read_bytes(path))


def write_bytes(path: Location, data: bytes | pa.Buffer) -> None:
    """Publish ``data`` at ``path`` so that a reader sees the old content or the whole new one."""
    if isinstance(path, Path):
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk, a folder in the way: no stray temporary file
            raise
        return
    fs, inner = filesystem(path)
    stream = fs.open_output_stream(inner)
    # No `with`: its exit would close the stream, and closing commits the upload even after a failed write.
    stream.write(data)
    stream.close()


def write_json(path: Location, obj: Any, sort_keys: bool = True) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


def exists(path: Location) -> bool:
    if isinstance(path, Path):
        return path.exists()
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def size(path: Location) -> int:
    if isinstance(path, Path):
        return path.stat().st_size
    fs, inner = filesystem(path)
    return int(fs.get_file_info(inner).size)


def list_names(prefix: Location) -> list[str]:
    """The names directly under ``prefix`` (a folder, or a key prefix ending in ``/``); none if it is absent."""
    if isinstance(prefix, Path):
        return [p.name for p in prefix.iterdir()] if prefix.is_dir() else []
    fs, inner = filesystem(prefix)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return [PurePosixPath(i.path).name for i in infos]


def delete_prefix(prefix: Location) -> None:
    """Remove a folder or everything under a key prefix; nothing if it is absent."""
    if isinstance(prefix, Path):
        if prefix.exists():
            import shutil

            shutil.rmtree(prefix)
        return
    fs, inner = filesystem(prefix)
    fs.delete_dir_contents(inner, missing_dir_ok=True)


def remove(path: Location) -> None:
    """Delete one file or object; nothing if it is absent."""
    if isinstance(path, Path):
        path.unlink(missing_ok=True)
        return
    if exists(path):
        fs, inner = filesystem(path)
        fs.delete_file(inner)


def makedirs(path: Location) -> None:
    """A local folder; nothing on object storage, where a prefix exists once an object is under it."""
    if isinstance(path, Path):
        path.mkdir(parents=True, exist_ok=True)


def read_table(path: str | Location, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    loc = as_location(path)
    if isinstance(loc, Path):
        return pq.read_table(loc, columns=columns)
    fs, inner = filesystem(loc)
    return pq.read_table(inner, columns=columns, filesystem=fs)


def upload_folder(local: Path, dest: ObjectPath, skip: tuple[str, ...] = ()) -> None:
    """Copy the files under ``local`` to ``dest`` (streamed, each object visible once whole), but ``skip``."""
    fs, inner = filesystem(dest)
    for entry in sorted(local.iterdir()):
        if entry.name in skip or entry.name.startswith("."):
            continue
        target = f"{inner}/{entry.name}"
        if entry.is_dir():
            # no stale files from an earlier upload; the stage marks itself done only after this
            fs.delete_dir_contents(target, missing_dir_ok=True)
        pafs.copy_files(str(entry), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def folder_files(prefix: Location) -> list[tuple[str, int, int]]:
    """(path relative to ``prefix``, size, modification time in ns) of every file under it, sorted; none if absent.

    On object storage the time is the object's upload time: the same for every reader, anywhere.
    """
    if isinstance(prefix, Path):
        if not prefix.is_dir():
            return []
        files = (f for f in prefix.rglob("*") if f.is_file())
        return sorted((f.relative_to(prefix).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    fs, inner = filesystem(prefix)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    return sorted(
        (i.path[len(inner) + 1 :], int(i.size), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File
    )


def cached_folder(src: ObjectPath) -> Path:
    """A local copy of the folder ``src`` on object storage (a model vLLM and transformers load from disk),
    downloaded once per version: the copy's name carries a digest of every object's name, size and upload
    time, so a model written again at the same URI is downloaded again, never served stale.

    The copy is made in a private folder and renamed into place (two processes on one machine both end
    with one whole copy); older copies of the same URI are removed.
    """
    import hashlib
    import shutil

    files = folder_files(src)
    if not files:
        raise FileNotFoundError(f"{src}: no objects under this prefix")
    digest = hashlib.sha256(json.dumps([str(src), files]).encode()).hexdigest()[:16]
    parent = local_cache(src.parent, "")
    final = parent / f"{src.name}@{digest}"
    if final.is_dir():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{final.name}.{uuid.uuid4().hex}.partial"
    try:
        fs, inner = filesystem(src)
        for name, _, _ in files:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{inner}/{name}") as f, open(work / name, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 24)
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():  # not another process's whole copy: something else in the way
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in parent.glob(f"{src.name}@*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def local_cache(path: Location, name: str) -> Path:
    """A local folder standing in for ``path/name`` when ``path`` is on object storage (a cache of API
    answers, say, which takes one small file per request); ``path/name`` itself when local."""
    if isinstance(path, Path):
        return (path / name).absolute()
    return Path("~/.cache/selfcorrect/objects").expanduser() / path.scheme / path.key / name


def _has_credentials() -> bool:
    if any(os.environ.get(k) for k in _CREDENTIAL_SOURCES):
        return True
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return Path(shared).expanduser().is_file()


def check_writable(path: Location) -> None:
    """Refuse a run directory on object storage that cannot be written, before any work: the bucket
    must exist and a small probe object must write, read back and delete. Local paths pass."""
    if isinstance(path, Path):
        return
    where = str(path)
    if path.scheme in ("s3", "s3a") and not _has_credentials() and endpoint():
        # An S3-compatible server has no instance role to fall back on.
        raise StorageError(
            f"run_dir {where}: no S3 credentials in the environment (set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) for the endpoint {endpoint()}"
        )
    try:
        fs, _ = filesystem(path)
        if fs.get_file_info(path.bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"run_dir {where}: the bucket {path.bucket!r} does not exist (or is not visible)")
        probe = path / f"_write_probe-{uuid.uuid4().hex}"
        write_bytes(probe, b"probe")
        if read_bytes(probe) != b"probe":
            raise StorageError(f"run_dir {where}: a probe object read back different bytes")
        fs.delete_file(probe.key)
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as e:
        hint = "" if _has_credentials() else " (no AWS credentials found in the environment or ~/.aws)"
        raise StorageError(f"run_dir {where}: cannot write there{hint}: {e}") from None
