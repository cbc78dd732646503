"""Storage access: how every module of the trainer and the operator reaches a path or a URI. Torch-free.

The one home of
- local URIs: `path_to_uri` and `uri_to_path` are the only places that percent-encode and decode a
  `file://` URI, so `/tmp/my run` and `file:///tmp/my%20run` name one place;
- reaching storage: `filesystem` and `open_uri` (fsspec: local disks, s3://, gs://, memory://);
- writing without leaving half a file: `open_output` (a stream that is discarded on error),
  `write_atomic` (a small blob: write aside and rename on a local disk, one PUT on an object store)
  and `replacing` (a local file written beside its name and renamed over it);
- hashing a stored file (`sha256_file`) and the job's local scratch folder (`work_dir`).

Narrow on purpose (torchtitan's CheckpointStorage protocol, OLMo-core's io.py): what a file means is
decided by the modules above it (manifest.py: the checkpoint commit record; metrics_log.py, lease.py,
failure.py: their records).

    fs, path = filesystem("s3://bucket/run/phases/pretrain/config.json")
    write_atomic(fs, path, b"{}")
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import fsspec
from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

if TYPE_CHECKING:  # the config is torch-free too; imported for annotations only
    from olmo_trainer.config import TrainConfig

__all__ = [
    "filesystem",
    "is_local",
    "open_output",
    "open_uri",
    "path_to_uri",
    "replacing",
    "sha256_file",
    "uri_to_path",
    "work_dir",
    "write_atomic",
]

_CHUNK = 8 * 1024 * 1024

FILE_SCHEME = "file:"


def path_to_uri(path: str | os.PathLike[str]) -> str:
    """The `file://` URI of a local path: made absolute, percent-encoded (RFC 8089 over RFC 3986), so
    that a space, `%`, `#`, `?` or a non-ASCII name survives every URI parser. `uri_to_path` inverts it.

        path_to_uri("/tmp/my run/ü")   # 'file:///tmp/my%20run/%C3%BC'
    """
    return Path(os.path.abspath(path)).as_uri()


def uri_to_path(uri: str) -> str:
    """What fsspec is given for `uri`: the local path a `file:` URI names, percent-decoded
    (`file:///tmp/my%20run`, `file://localhost/tmp/my%20run`, `file:/tmp/my%20run` -> `/tmp/my run`);
    a plain path, or any other URL (s3://, gs://, memory://), unchanged.

    fsspec does not decode `file://` URIs (LocalFileSystem._strip_protocol keeps `%20`), so a URI
    made by `path_to_uri` would otherwise name a sibling directory called `my%20run`. A `%` not
    followed by two hex digits is kept as it is (urllib.parse.unquote), so a hand-written, unencoded
    `file:///tmp/my run` still names `/tmp/my run`.
    """
    if not uri.startswith(FILE_SCHEME):
        return uri
    rest = uri[len(FILE_SCHEME) :]
    if rest.startswith("//"):  # an authority: empty or localhost (RFC 8089 section 2)
        rest = rest[2:]
        rest = rest[len("localhost") :] if rest.startswith("localhost/") else rest
    return unquote(rest, errors="surrogateescape")  # the inverse of as_uri's os.fsencode


def filesystem(uri: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a URI and the path inside it (plain paths are local; a `file://` URI
    is decoded by `uri_to_path`).

    Raises ImportError when the URI's protocol needs a package that is not installed (s3fs, gcsfs),
    ValueError for an unknown protocol.
    """
    fs, path = fsspec.core.url_to_fs(uri_to_path(uri), **storage_options)
    return fs, path


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> Any:
    """`fsspec.open` of a path or URL (a `file://` URI decoded by `uri_to_path`); kwargs are fsspec.open's
    (compression, encoding, storage options). Use it as a context manager."""
    return fsspec.open(uri_to_path(uri), mode, **kwargs)


@contextlib.contextmanager
def open_output(fs: AbstractFileSystem, path: str, **kwargs: Any) -> Iterator[Any]:
    """`fs.open(path, "wb", **kwargs)` that never leaves a partial file or orphan upload parts behind.

    fsspec's own `with fs.open(...)` closes, and so commits, what was written even when the block
    raises: on S3 a truncated object appears (its multipart upload completed), and when the upload
    itself is what failed, its parts stay stored, unseen, until someone aborts them. Here an exception
    discards instead: an object store's pending upload is aborted (s3fs: AbortMultipartUpload; gcsfs
    cancels its resumable upload) and a local partial file is removed; then the error is re-raised.
    Only a process killed outright (SIGKILL, a lost node) can still leave parts: the bucket's
    AbortIncompleteMultipartUpload lifecycle rule (docs/reliability.md) reaps those.
    """
    stream = fs.open(path, "wb", **kwargs)
    try:
        yield stream
    except BaseException:
        _discard(fs, stream, path)
        raise
    stream.close()


def _discard(fs: AbstractFileSystem, stream: Any, path: str) -> None:
    if isinstance(stream, AbstractBufferedFile):  # object stores: nothing is visible until commit
        try:
            stream.discard()
        except Exception as error:  # keep the original error; the lifecycle rule reaps the parts
            logging.getLogger(__name__).warning("could not abort the upload of %s: %s", path, error)
        finally:
            stream.closed = True  # so that neither close() nor __del__ commits it after all
        return
    stream.close()
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def is_local(fs: AbstractFileSystem) -> bool:
    """True for the local disk (what `filesystem` gives for a plain path or a `file://` URI): files can be
    renamed atomically and appended to; object stores cannot."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def sha256_file(fs: AbstractFileSystem, path: str) -> str:
    """Hex sha256 of one file, read in 8 MiB chunks. Raises FileNotFoundError when it does not exist."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(fs: AbstractFileSystem, path: str, blob: bytes) -> None:
    """Write a small file so that no reader ever sees half of it: on a local disk written beside its
    name (a unique temporary name: concurrent writers never share one) and renamed over it; on an
    object store one PUT, which is atomic there. Raises the filesystem's OSError when it cannot write."""
    if is_local(fs):
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        fs.pipe_file(tmp, blob)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, blob)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary local path beside `path` to write; renamed over `path` when the block ends, removed
    when it raises. Concurrent writers (ranks sharing a node's work dir) never read a partial file.

        with replacing("/work/order.npy") as partial, open(partial, "wb") as out:
            np.save(out, order)
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    os.close(fd)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def work_dir(cfg: TrainConfig) -> str:
    """Local scratch for the data pipeline: OLMO_WORK_DIR, else beside a local save dir, else /tmp."""
    if os.environ.get("OLMO_WORK_DIR"):
        return os.environ["OLMO_WORK_DIR"]
    fs, root = filesystem(cfg.save_dir)
    if is_local(fs):
        return os.path.join(root, "work")
    return os.path.join(tempfile.gettempdir(), "olmorun-work", cfg.config_hash())
