"""Archive committed checkpoints to object storage and verify them there, through fsspec.

A checkpoint is a `stepN/` directory committed by its MANIFEST.json (see olmo_trainer.manifest).
`archive_checkpoint` copies one to s3://, gs://, file:// or a local path so that the copy is again a
committed checkpoint, and never looks like one before it is complete:

- every file is hashed while it streams (one read of the source) and checked against the MANIFEST
  before the destination object becomes visible; a mismatch aborts that object and fails the archive;
- after the uploads one listing checks every remote size (one LIST per 1000 objects, not a HEAD per
  file), and with `verify_remote=True` every remote object is read back and re-hashed;
- the MANIFEST is uploaded last, byte for byte, and only when every file is in place: an interrupted
  archive leaves no MANIFEST at the destination, and a rerun skips what is already there.

How a rerun knows a file is already there (idempotence): one listing gives the candidates with the
right size. On S3 every object is written with its sha256 in the object metadata
(`x-amz-meta-olmorun-sha256`), set by the same PUT (or multipart completion) that makes the content
visible, so a HEAD showing that sha256 proves the object was written from a verified source. A plain overwrite
drops that metadata, so an object replaced by
anything else is uploaded again. Other filesystems (local, gs://) keep no such record here: a
destination file is skipped when its size matches and a re-hash of it matches the MANIFEST.
`verify_checkpoint` always re-hashes everything and is the check to trust.

Credentials come from the environment only (`storage_options`): a Kubernetes Secret becomes env
vars of the pod. No secret is ever logged or put in an error message.

    options = storage_options("s3://bucket/run/checkpoints/step100")
    report = archive_checkpoint("/scratch/run/checkpoints/step100", "s3://bucket/run/checkpoints/step100",
                                dst_options=options)
    assert verify_checkpoint(report.dst, options=options).ok

This module imports no torch or numpy: the operator image has neither.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fsspec import AbstractFileSystem

from olmo_trainer import manifest as mf
from olmo_trainer import storage
from olmo_trainer.layout import manifest_path, step_uri

if TYPE_CHECKING:
    from olmo_operator.api import OlmoRun

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SHA256_METADATA = "olmorun-sha256"
"""S3 user-metadata key that records the sha256 of an archived object (x-amz-meta-olmorun-sha256)."""

PART_SIZE = 64 * 2**20
"""Read and upload unit. A file up to this size goes in one PUT (like s3fs `put` does up to 100 MB);
larger files use multipart with parts of this size. Memory in flight is about workers * PART_SIZE."""


class ArchiveError(Exception):
    """Archiving or verifying failed. The message names the URI and never contains credentials."""


class NotCommittedError(ArchiveError):
    """The source is not a committed checkpoint (no valid MANIFEST)."""


class CorruptSourceError(ArchiveError):
    """Source files are missing or differ from their MANIFEST; nothing of them was committed."""


class StorageAccessError(ArchiveError):
    """The storage refused the credentials from the environment (`denied`), or cannot be reached."""

    def __init__(self, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        self.denied = denied


class DestinationConflictError(ArchiveError):
    """The destination already holds a different committed checkpoint: never overwritten."""


@dataclass
class ArchiveReport:
    """What one `archive_checkpoint` call did."""

    src: str
    dst: str
    step: int
    copied: int
    """Files uploaded by this call."""
    skipped: int
    """Files already present at the destination with the right size and sha256."""
    bytes: int
    """Bytes uploaded by this call (skipped files not counted)."""
    seconds: float
    verified: bool
    """True when every destination file was read back and re-hashed (verify_remote). Sizes are always
    checked after upload and sources always hashed against the MANIFEST, so False means 'size-checked'."""

    def summary(self) -> str:
        rate = self.bytes / 2**20 / self.seconds if self.seconds > 0 else 0.0
        check = "remote re-hashed" if self.verified else "sizes checked"
        return (
            f"archived {self.src} -> {self.dst}: step {self.step}, {self.copied} copied "
            f"({self.bytes / 2**20:.1f} MiB, {rate:.1f} MiB/s), {self.skipped} skipped, "
            f"{self.seconds:.1f}s, {check}"
        )


# ---------------------------------------------------------------------------------------------
# Credentials and filesystems
# ---------------------------------------------------------------------------------------------


def protocol_of(uri: str) -> str:
    """The URI scheme ('file' for plain paths), with gcs normalised to gs."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    return "gs" if scheme == "gcs" else scheme


def storage_options(uri: str, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for a URI, from the environment only (a Kubernetes Secret becomes env).

    s3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), endpoint from the argument,
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL. Unset keys are left to botocore's own chain (instance
    profile, web identity). gs: GOOGLE_APPLICATION_CREDENTIALS (a service-account file), else gcsfs's
    default chain. Other schemes need nothing. No region is set: S3-compatible servers reject it on
    bucket creation, and botocore reads AWS_REGION by itself.
    """
    env = os.environ
    protocol = protocol_of(uri)
    options: dict[str, Any] = {}
    if protocol == "s3":
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            options["key"] = env["AWS_ACCESS_KEY_ID"]
            options["secret"] = env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                options["token"] = env["AWS_SESSION_TOKEN"]
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    elif protocol == "gs":
        if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            options["token"] = env["GOOGLE_APPLICATION_CREDENTIALS"]
        if env.get("GOOGLE_CLOUD_PROJECT"):
            options["project"] = env["GOOGLE_CLOUD_PROJECT"]
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
    return options


def run_storage_options(run: OlmoRun, uri: str | None = None) -> dict[str, Any]:
    """fsspec options for a file of `run` at `uri` (default: its storage URI): credentials from the
    environment, the endpoint from the spec's `storage.endpointUrl` (else the environment's).

    The one home of a run's storage options: the operator, `olmorun local`'s progress lines,
    `olmorun status`, `diff` and `report` all read a run's files through it.
    """
    return storage_options(uri or run.spec.storage.uri, endpoint_url=run.spec.storage.endpoint_url)


def _open_fs(uri: str, options: dict[str, Any] | None) -> tuple[AbstractFileSystem, str]:
    if options is None:
        options = storage_options(uri)
    try:
        fs, path = storage.filesystem(uri, **options)
    except (ImportError, ValueError) as error:
        # fsspec names the missing package or the unknown protocol; options are not in the message.
        raise StorageAccessError(f"{uri}: cannot open this storage: {error}") from None
    fs.invalidate_cache()  # a long-lived process must see objects written by others since
    return fs, path.rstrip("/")


def _access(uri: str, call: Callable[[], Any]) -> Any:
    """Run a storage call, turning refused credentials and unreachable storage into StorageAccessError."""
    try:
        return call()
    except Exception as error:
        access = access_error(uri, error)
        if access is None:
            raise
        raise access from None


TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.EREMOTEIO})
"""OSError numbers of a storage that is there but cannot answer now: s3fs turns `503 SlowDown` and
`ServiceUnavailable` into EBUSY and `500 InternalError` into EREMOTEIO (s3fs/errors.py)."""
RETRY_DELAYS = (2.0, 4.0, 8.0)
"""Seconds between the tries of `retrying` (4 tries, ~14 s of waiting): a throttling burst or a server
restart passes within one reconcile step; a longer outage leaves the run waiting (StorageUnavailable)."""


def transient(error: BaseException) -> bool:
    """Whether trying again later can succeed: unreachable or busy storage, not refused credentials,
    a missing file or a bad checkpoint."""
    if isinstance(error, StorageAccessError):
        return not error.denied
    if isinstance(error, FileNotFoundError | PermissionError | ArchiveError):
        return False
    access = access_error("", error)
    return access is not None and not access.denied


def retrying(
    call: Callable[[], _T],
    *,
    delays: Sequence[float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """`call()`, tried again after each of `delays` while it fails with a transient storage error
    (`transient`); the last error is raised as it is (turned into StorageAccessError by `access_error`
    by the caller). Other errors are raised at once. `delays` default to RETRY_DELAYS."""
    for delay in RETRY_DELAYS if delays is None else delays:
        try:
            return call()
        except Exception as error:
            if not transient(error):
                raise
            log.warning("storage busy or unreachable (%s); trying again in %.0fs", _first_line(error), delay)
        sleep(delay)
    return call()


def access_error(uri: str, error: BaseException) -> StorageAccessError | None:
    """`error` as a StorageAccessError when it says the storage at uri refused the credentials or cannot be
    reached (None for any other error). The message names the URI and the client's own words, which
    carry no secret values."""
    if isinstance(error, StorageAccessError):
        return error
    if isinstance(error, PermissionError):
        return StorageAccessError(
            f"{uri}: access denied ({_first_line(error)}); check the storage credentials in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS)",
            denied=True,
        )
    if isinstance(error, ConnectionError | TimeoutError):
        return StorageAccessError(f"{uri}: storage unreachable ({_first_line(error)})")
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return StorageAccessError(f"{uri}: storage busy ({_first_line(error)}); it answers errors for now")
    # Client libraries raise their own types (botocore NoCredentialsError, EndpointConnectionError,
    # google.auth errors): name the type and its message.
    if type(error).__module__.split(".")[0] not in _CLIENT_LIBRARIES:
        return None
    denied = "Credentials" in type(error).__name__
    hint = "; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" if denied else ""
    return StorageAccessError(f"{uri}: {type(error).__name__}: {_first_line(error)}{hint}", denied=denied)


_CLIENT_LIBRARIES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# Destinations: how to write a verified object and how to recognise one already written
# ---------------------------------------------------------------------------------------------


class _Destination:
    """Any fsspec filesystem: write in place, remove on mismatch, recognise by size + re-hash."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def listing(self, directory: str) -> dict[str, int]:
        """Size of every file under directory, by relative path: one LIST per 1000 objects on S3/GCS."""
        self.fs.invalidate_cache(directory)
        try:
            found = self.fs.find(directory, detail=True)
        except FileNotFoundError:
            return {}
        prefix = f"{directory}/"
        return {
            name[len(prefix) :]: int(info["size"]) for name, info in found.items() if name.startswith(prefix)
        }

    def present(self, path: str, expected: dict[str, Any]) -> bool:
        """Whether the file at path (already known to have the right size) is the expected one."""
        return storage.sha256_file(self.fs, path) == expected["sha256"]

    def write(
        self, path: str, expected: dict[str, Any], parts: Iterator[bytes], check: Callable[[], None]
    ) -> None:
        """Write the parts to path; `check` raises CorruptSourceError after the last part if the source was
        bad.

        An error removes the partial file; a crash midway leaves it here, which is no checkpoint
        without the MANIFEST, and a rerun replaces it (its size or hash differs).
        """
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        with storage.open_output(self.fs, path) as out:  # removed again when check() or a write raises
            for part in parts:
                out.write(part)
            check()


class _S3Destination(_Destination):
    """S3: an object becomes visible only through a PUT or multipart completion carrying its sha256.

    A process killed during a multipart upload leaves its parts invisible but stored until aborted:
    give archive buckets an AbortIncompleteMultipartUpload lifecycle rule.
    """

    def present(self, path: str, expected: dict[str, Any]) -> bool:
        bucket, key, _ = self.fs.split_path(path)
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        stored = (head.get("Metadata") or {}).get(SHA256_METADATA)
        return int(head["ContentLength"]) == expected["size"] and stored == expected["sha256"]

    def write(
        self, path: str, expected: dict[str, Any], parts: Iterator[bytes], check: Callable[[], None]
    ) -> None:
        """Upload the parts with their sha256 in the metadata. Raises what `check` raises
        (CorruptSourceError),
        after aborting a multipart upload, and the client's own errors."""
        bucket, key, _ = self.fs.split_path(path)
        stamp = {SHA256_METADATA: expected["sha256"]}
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:  # one part: a single PUT, sent only after the whole file was hashed
            check()
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=first, Metadata=stamp)
            return
        upload_id = self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key, Metadata=stamp)[
            "UploadId"
        ]
        done: list[dict[str, Any]] = []
        try:
            for number, part in enumerate(itertools.chain((first, second), parts), start=1):
                out = self.fs.call_s3(
                    "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                )
                done.append({"PartNumber": number, "ETag": out["ETag"]})
            check()  # a corrupt source is aborted here: the object never appears
            self.fs.call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            try:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception as error:  # keep the original error; the bucket's lifecycle rule reaps it
                log.warning("could not abort the multipart upload of %s: %s", path, _first_line(error))
            raise


def _destination(fs: AbstractFileSystem) -> _Destination:
    try:
        from s3fs import S3FileSystem
    except ImportError:  # the s3 extra is not installed: no s3:// destination can exist either
        return _Destination(fs)
    return _S3Destination(fs) if isinstance(fs, S3FileSystem) else _Destination(fs)


# ---------------------------------------------------------------------------------------------
# Archive
# ---------------------------------------------------------------------------------------------


def plan_copy(
    files: dict[str, dict[str, Any]], present: Callable[[str], bool]
) -> tuple[list[str], list[str]]:
    """Split the MANIFEST's files into (to copy, to skip), largest first so big files start early."""
    order = sorted(files, key=lambda rel: (-int(files[rel]["size"]), rel))
    skip = [rel for rel in order if present(rel)]
    skipped = set(skip)
    return [rel for rel in order if rel not in skipped], skip


def archive_checkpoint(
    src: str,
    dst: str,
    *,
    src_options: dict[str, Any] | None = None,
    dst_options: dict[str, Any] | None = None,
    workers: int = 8,
    verify_remote: bool = False,
) -> ArchiveReport:
    """Copy a committed checkpoint directory to dst, verified, MANIFEST last; idempotent and resumable.

    Options default to `storage_options(uri)` (the environment). Raises NotCommittedError for a
    source without a valid MANIFEST, CorruptSourceError when source files are missing or differ from
    it (dst then gets no MANIFEST), StorageAccessError for refused credentials, and
    DestinationConflictError when dst already holds a different committed checkpoint.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    started = time.perf_counter()
    src_fs, src_dir = _open_fs(src, src_options)
    dst_fs, dst_dir = _open_fs(dst, dst_options)
    blob, manifest = _read_source_manifest(src_fs, src_dir, src)
    already = _access(dst, lambda: mf.read_manifest(dst_fs, dst_dir))
    if already is not None and already != manifest:
        raise DestinationConflictError(
            f"{dst} already holds a different committed checkpoint; not overwritten"
        )

    files: dict[str, dict[str, Any]] = manifest["files"]
    dest = _destination(dst_fs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive") as pool:
        # One listing finds files of the right size; only those are checked further (HEAD or re-hash).
        listed = _access(dst, lambda: dest.listing(dst_dir))
        candidates = [rel for rel in files if listed.get(rel) == files[rel]["size"]]
        found = _access(
            dst, lambda: list(pool.map(lambda rel: dest.present(f"{dst_dir}/{rel}", files[rel]), candidates))
        )
        present = {rel for rel, ok in zip(candidates, found, strict=True) if ok}
        to_copy, to_skip = plan_copy(files, present.__contains__)

        def copy(rel: str) -> None:
            _copy_file(src_fs, f"{src_dir}/{rel}", dest, f"{dst_dir}/{rel}", rel, files[rel], verify_remote)

        def recheck(rel: str) -> None:
            _check_remote(dst_fs, f"{dst_dir}/{rel}", rel, files[rel])

        outcomes = list(pool.map(lambda rel: _outcome(dst, rel, copy), to_copy))
        if verify_remote:
            outcomes += pool.map(lambda rel: _outcome(dst, rel, recheck), to_skip)
    _raise_failures(src, outcomes)
    _check_sizes(dst, _access(dst, lambda: dest.listing(dst_dir)), {rel: files[rel] for rel in to_copy})
    if already is None:
        _access(dst, lambda: mf.commit(dst_fs, dst_dir, blob))  # the source's exact bytes, last
    report = ArchiveReport(
        src=src,
        dst=dst,
        step=int(manifest["step"]),
        copied=len(to_copy),
        skipped=len(to_skip),
        bytes=sum(int(files[rel]["size"]) for rel in to_copy),
        seconds=time.perf_counter() - started,
        verified=verify_remote,
    )
    log.info("%s", report.summary())
    return report


def _read_source_manifest(fs: AbstractFileSystem, directory: str, uri: str) -> tuple[bytes, dict[str, Any]]:
    """The MANIFEST's exact bytes (copied verbatim) and its parsed form, or NotCommittedError."""
    blob = _access(uri, lambda: _cat_or_none(fs, manifest_path(directory)))
    manifest = _access(uri, lambda: mf.read_manifest(fs, directory)) if blob is not None else None
    if blob is None or manifest is None:
        hint = ""
        steps = _access(uri, lambda: mf.committed_steps(fs, directory))
        if steps:
            hint = f" (it holds committed steps; pass one, e.g. {step_uri(uri, steps[-1][0])})"
        raise NotCommittedError(f"{uri} is not a committed checkpoint: no valid {mf.MANIFEST_NAME}{hint}")
    return blob, manifest


def _cat_or_none(fs: AbstractFileSystem, path: str) -> bytes | None:
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None


@dataclass
class _Failure:
    rel: str
    error: ArchiveError


def _outcome(uri: str, rel: str, work: Callable[[str], None]) -> _Failure | None:
    """One file's work; a failure is returned rather than raised so that every bad file is reported."""
    try:
        _access(uri, lambda: work(rel))
    except ArchiveError as error:
        return _Failure(rel, error)
    except Exception as error:  # an unexpected storage error: keep its text, never the options
        return _Failure(rel, ArchiveError(f"{uri}: {rel}: {type(error).__name__}: {_first_line(error)}"))
    return None


def _raise_failures(src: str, outcomes: list[_Failure | None]) -> None:
    failures = [o for o in outcomes if o is not None]
    corrupt = sorted(str(f.error) for f in failures if isinstance(f.error, CorruptSourceError))
    if corrupt:
        raise CorruptSourceError(
            f"{src}: source does not match its {mf.MANIFEST_NAME}: " + "; ".join(corrupt)
        )
    if failures:
        raise failures[0].error


def _copy_file(
    src_fs: AbstractFileSystem,
    src_path: str,
    dest: _Destination,
    dst_path: str,
    rel: str,
    expected: dict[str, Any],
    verify_remote: bool,
) -> None:
    """Stream one file, hashing as it goes; the destination object appears only if it matches."""
    try:
        size = int(src_fs.size(src_path))
    except FileNotFoundError:
        raise CorruptSourceError(f"{rel} is missing") from None
    if size != expected["size"]:
        raise CorruptSourceError(f"{rel} has {size} bytes, MANIFEST says {expected['size']}")
    digest = hashlib.sha256()

    def parts() -> Iterator[bytes]:
        with src_fs.open(src_path, "rb") as stream:
            while part := stream.read(PART_SIZE):
                digest.update(part)  # hashlib releases the GIL: other files stream meanwhile
                yield part

    def check() -> None:
        if digest.hexdigest() != expected["sha256"]:
            raise CorruptSourceError(f"{rel} sha256 differs from MANIFEST")

    dest.write(dst_path, expected, parts(), check)
    if verify_remote:
        _check_remote(dest.fs, dst_path, rel, expected)


def _check_sizes(uri: str, listed: dict[str, int], uploaded: dict[str, dict[str, Any]]) -> None:
    """After the uploads, before the MANIFEST: every uploaded file has its size at the destination."""
    wrong = [
        f"{rel} ({listed.get(rel, 'missing')} bytes, expected {expected['size']})"
        for rel, expected in uploaded.items()
        if listed.get(rel) != expected["size"]
    ]
    if wrong:
        raise ArchiveError(f"{uri}: destination sizes differ after upload: " + "; ".join(sorted(wrong)))


def _check_remote(fs: AbstractFileSystem, path: str, rel: str, expected: dict[str, Any]) -> None:
    problem = mf.verify_file(fs, path, expected)
    if problem is not None:
        raise ArchiveError(f"{rel}: destination copy is {problem}")


# ---------------------------------------------------------------------------------------------
# Verify and find
# ---------------------------------------------------------------------------------------------


def verify_checkpoint(
    uri: str, *, options: dict[str, Any] | None = None, workers: int = mf.VERIFY_WORKERS
) -> mf.VerifyReport:
    """Re-hash every file of the checkpoint at uri against its MANIFEST, in parallel, and check that the
    MANIFEST lists every file and everything DCP needs (manifest.verify).

    Raises StorageAccessError when the storage refuses the credentials or cannot be reached.
    """
    fs, directory = _open_fs(uri, options)
    report: mf.VerifyReport = _access(uri, lambda: mf.verify(fs, directory, uri=uri, workers=workers))
    return report


def latest_checkpoint(
    checkpoints_uri: str, *, options: dict[str, Any] | None = None
) -> tuple[int, str] | None:
    """The newest committed `stepN/` under a checkpoints directory, as (step, uri), or None.

    Raises StorageAccessError when the storage refuses the credentials or cannot be reached.
    """
    fs, directory = _open_fs(checkpoints_uri, options)
    found: tuple[int, str] | None = _access(
        checkpoints_uri, lambda: mf.latest_committed(fs, directory, uri=checkpoints_uri)
    )
    return found


def is_committed(uri: str, *, options: dict[str, Any] | None = None) -> bool:
    """Whether uri is a directory with a valid MANIFEST."""
    fs, directory = _open_fs(uri, options)
    return _access(uri, lambda: mf.read_manifest(fs, directory)) is not None


def list_steps(uri: str, *, options: dict[str, Any] | None = None) -> list[int]:
    """Steps of every `stepN/` directory under uri, committed or not, ascending."""
    fs, directory = _open_fs(uri, options)
    return [step for step, _ in _access(uri, lambda: mf.step_dirs(fs, directory))]


def exists(uri: str, *, options: dict[str, Any] | None = None) -> bool:
    """Whether anything (a file or a non-empty directory) is at uri."""
    fs, path = _open_fs(uri, options)
    return bool(_access(uri, lambda: fs.exists(path)))
