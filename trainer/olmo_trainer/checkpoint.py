"""Sharded checkpoints: DCP save/load, atomic commit by MANIFEST, retention, resharding on load.

A checkpoint is a directory `<directory>/stepN/` holding

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint shards of {"model": ..., "optim": ...}
                                    (+ "<name>_model", "<name>_optim" for each extra trained model of
                                    the app state, e.g. PPO's value model: "value_model", "value_optim")
    trainer.pt                      {"world_size": W, "ranks": [rank 0's trainer state, ..., rank W-1's]}
    config.json                     the TrainConfig of the job (when given): the checkpoint describes itself
    MANIFEST.json                   sha256 of every other file, written LAST by rank 0 (see manifest.py);
                                    each rank hashes the shards it wrote, so the commit scales with ranks

A directory without a valid MANIFEST does not exist: `latest()` ignores it and `cleanup_uncommitted()`
removes it. Model and optimizer go through `get_state_dict`/`set_state_dict`, so the same code serves
plain modules, DDP and FSDP2, and DCP reshards on load: a checkpoint written by W ranks loads on any
other world size. Trainer state (step, tokens, data position, per-rank RNG states) is gathered from
every rank into one small file; on a different world size rank r gets the state saved by rank r % W.

Saving a step that is already committed is skipped (never overwritten): a job that resumes exactly at
a checkpoint and saves it again is a no-op, not a rewrite of archived files. With `async_save`, the
state is copied to CPU memory during `save()`; shard writing and the commit (hashing, MANIFEST,
retention) run in background threads on a dedicated gloo group, and `wait()` (or the next save)
blocks until the MANIFEST is written. Retention runs after each commit on rank 0 and deletes a
checkpoint's MANIFEST first, so an interrupted deletion leaves an uncommitted directory, never a
half-deleted "committed" one.

Fencing (lease.py): given the job's `lease`, rank 0 checks it right before every MANIFEST write and
every deletion (retention, clearing a crashed save, un-committing a damaged checkpoint), and before a
save writes its first file. An attempt that no longer holds the lease raises lease.Fenced on every
rank and writes nothing more: two attempts alive at once never both write one job directory.

    ckpt = Checkpointer(f"{cfg.save_dir}/checkpoints", cfg.checkpoint, config_hash=cfg.config_hash(),
                        parent=cfg.init_from, train_config=cfg)
    if (found := ckpt.latest()) is not None:
        ckpt.load(found[1], app_state)
    ...
    ckpt.save(step, app_state)          # collective: every rank calls it
    ckpt.save(step, app_state, final=True); ckpt.wait()
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from fsspec import AbstractFileSystem
from torch import nn
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

from olmo_trainer import identity, manifest, safe_load, storage
from olmo_trainer.config import CheckpointConfig, TrainConfig
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.layout import damaged_manifest_path, join, manifest_path, step_uri
from olmo_trainer.lease import FENCED_REASON, Fenced, Lease

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TRAINER_NAME = "trainer.pt"
MODEL_KEY = "model"
OPTIM_KEY = "optim"


UNSAFE_CHECKPOINT_REASON = "UnsafeCheckpoint"
"""failure.json reason of a job whose checkpoint (trainer.pt, DCP's .metadata or bytes items) names
something outside the allow-lists of safe_load.py."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, uncommitted, or does not fit what is being loaded into it."""


# ---------------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------------


def steps_to_delete(
    committed: list[tuple[int, bool]], *, keep_last: int, keep_every: int | None
) -> list[int]:
    """Retention: of the committed (step, final) pairs, the steps to delete.

    Kept: the newest `keep_last`, every step that is a multiple of `keep_every`, and any final one.
    """
    steps = sorted(step for step, _ in committed)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    keep |= {step for step, final in committed if final}
    if keep_every:
        keep |= {step for step in steps if step % keep_every == 0}
    return [step for step in steps if step not in keep]


def trainer_state_for_rank(saved: dict[str, Any], rank: int) -> dict[str, Any]:
    """The trainer state a rank resumes with; on a world-size change rank r takes rank r % W's."""
    states = saved["ranks"]
    return states[rank % len(states)]


# ---------------------------------------------------------------------------------------------
# Storage and process-group helpers
# ---------------------------------------------------------------------------------------------


class _ReproducibleFileSystemWriter(dcp.FileSystemWriter):
    """DCP's writer without its observability record: `storage_meta()` (a public StorageWriter hook,
    "None by default") would put a random save_id and the absolute checkpoint path into `.metadata`,
    so that two identical saves never had identical files. Without it `.metadata` is a function of
    the saved state and the world size alone."""

    def storage_meta(self) -> StorageMeta | None:
        return None


class _DiscardingFileSystem(FileSystem):
    """DCP's fsspec file system, with each shard written through storage.open_output: DCP's own stream
    removes a failed file and then lets fsspec commit it (a truncated object, or orphan upload parts);
    this one aborts the upload instead."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if "w" not in mode or self.fs is None:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with storage.open_output(self.fs, os.fspath(path)) as stream:
            yield stream


class _ReproducibleFsspecWriter(FsspecWriter):
    """FsspecWriter (s3://, gs://) without the random save_id and path (see _ReproducibleFileSystemWriter),
    writing shards through _DiscardingFileSystem."""

    def __init__(self, path: str, **storage_options: Any) -> None:
        super().__init__(path, **storage_options)
        discarding = _DiscardingFileSystem()
        discarding.init_path(path, **storage_options)  # the same cached fsspec filesystem as FsspecWriter's
        # FileSystemWriter annotates `fs` with its local FileSystem; FsspecWriter, too, puts its own there.
        self.fs = discarding  # type: ignore[assignment]

    def storage_meta(self) -> StorageMeta | None:
        return None


def remove_tree(fs: AbstractFileSystem, path: str) -> None:
    """Delete a directory and everything in it, leaving no folder entry behind.

    On object stores a "directory" can outlive its objects: a zero-byte `path/` marker object, or an
    empty folder kept by a filer-backed server (SeaweedFS). Left there, it lists as a step directory
    without a MANIFEST, which every restart would report as a crashed save.
    """
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if not storage.is_local(fs):
        with contextlib.suppress(FileNotFoundError):  # deleting a missing key is a no-op on S3 anyway
            fs.rm_file(path.rstrip("/") + "/")  # the marker key itself
        fs.invalidate_cache(path)


def _has_files(fs: AbstractFileSystem, path: str) -> bool:
    """True when anything but the directory's own marker is under `path`."""
    own = path.rstrip("/")
    return any(str(found).rstrip("/") != own for found in fs.find(path))


def _writer(uri: str, storage_options: dict[str, Any]) -> StorageWriter:
    fs, path = storage.filesystem(uri, **storage_options)
    if storage.is_local(fs):
        return _ReproducibleFileSystemWriter(path)
    return _ReproducibleFsspecWriter(uri, **storage_options)


def _reader(uri: str, storage_options: dict[str, Any]) -> StorageReader:
    """DCP's reader of `uri`, reading its `.metadata` through an allow-list (safe_load.py)."""
    fs, path = storage.filesystem(uri, **storage_options)
    if storage.is_local(fs):
        return safe_load.SafeFileSystemReader(path)
    return safe_load.SafeFsspecReader(uri, **storage_options)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _barrier(group: Any = None) -> None:
    if _distributed():
        dist.barrier(group=group)


def _decided_by_rank0(decide: Callable[[], Any], group: Any = None) -> Any:
    """Rank 0 runs `decide` and every rank gets its result (or its error, raised everywhere as a
    CheckpointError, or as Fenced when the lease refused), so that all ranks take the same branch and
    none hangs in a later collective. Collective over `group` (the default group when None)."""
    outcome: tuple[str, Any] = ("ok", None)
    if _rank() == 0:
        try:
            outcome = ("ok", decide())
        except PermanentFailure as error:  # Fenced, UnsafeCheckpoint: the same reason on every rank
            outcome = ("permanent", (error.failure.reason, error.failure.message))
        except Exception as error:
            outcome = ("error", f"{type(error).__name__}: {error}")
    if _distributed():
        box = [outcome]
        dist.broadcast_object_list(box, src=0, group=group)
        outcome = box[0]
    kind, value = outcome
    if kind == "permanent":
        reason, message = value
        raise Fenced(message) if reason == FENCED_REASON else PermanentFailure(reason, message)
    if kind == "error":
        raise CheckpointError(value)
    return value


def _gather_to_rank0(value: Any, group: Any = None) -> list[Any] | None:
    """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
    if not _distributed():
        return [value]
    gathered: list[Any] | None = [None] * _world_size() if _rank() == 0 else None
    dist.gather_object(value, gathered, dst=0, group=group)
    return gathered


def _hash_own_shards(fs: AbstractFileSystem, path: str, rank: int) -> dict[str, dict[str, Any]]:
    """MANIFEST entries of the shard files this rank wrote (DCP names them `__<rank>_<n>.distcp`).

    Every rank hashes its own shards in parallel; rank 0 hashes whatever is left (metadata, side files).
    """
    prefix = f"__{rank}_"
    entries = {}
    for name in fs.ls(path, detail=False):
        rel = str(name).rstrip("/").rsplit("/", 1)[-1]
        if rel.startswith(prefix) and rel.endswith(".distcp"):
            entries[rel] = {"sha256": storage.sha256_file(fs, str(name)), "size": int(fs.size(str(name)))}
    return entries


@contextmanager
def _single_process() -> Iterator[None]:
    """DCP warns on every call without a process group; for a one-process job that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to .* in a single process.*")
        yield


def _dcp_load(uri: str, state: dict[str, Any], reader: StorageReader, *, no_dist: bool = False) -> None:
    """dcp.load, with its failures (a BaseException carrying every rank's error) as a CheckpointError;
    non-tensor items are read with the weights-only unpickler (safe_load.SafeLoadPlanner)."""
    try:
        reader.read_metadata()  # DCP reports a refused index only as "metadata is None": read it here first
        with _single_process():
            dcp.load(state, storage_reader=reader, planner=safe_load.SafeLoadPlanner(), no_dist=no_dist)
    except safe_load.UnsafeCheckpointError as error:
        raise unsafe(uri, error) from None
    except CheckpointException as error:
        unsafe_ones = [
            exc for exc, _ in error.failures.values() if isinstance(exc, safe_load.UnsafeCheckpointError)
        ]
        if unsafe_ones:
            raise unsafe(uri, unsafe_ones[0]) from None
        reasons = sorted({f"{type(exc).__name__}: {exc}" for exc, _ in error.failures.values()})
        raise CheckpointError(f"cannot load {uri}: {'; '.join(reasons)}") from None


def _require_committed(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    fs, path = storage.filesystem(uri, **storage_options)
    found = manifest.read_manifest(fs, path)
    if found is None:
        raise CheckpointError(f"{uri} is not a committed checkpoint (no valid {manifest.MANIFEST_NAME})")
    return found


def unsafe(uri: str, error: BaseException) -> PermanentFailure:
    """The failure of a job whose checkpoint names something outside the allow-lists (safe_load.py):
    retrying would read the same bytes."""
    return PermanentFailure(
        UNSAFE_CHECKPOINT_REASON,
        f"{uri} names something a checkpoint never holds ({safe_load.refusal(error)[:300]}); it was not "
        "loaded (loading it "
        "could run code). Restore the checkpoint from the archive or delete it",
    )


def _metadata(uri: str, storage_options: dict[str, Any]) -> Any:
    """DCP's index of `uri` (read through the allow-list; PermanentFailure UnsafeCheckpoint otherwise)."""
    try:
        return _reader(uri, storage_options).read_metadata()
    except safe_load.UnsafeCheckpointError as error:
        raise unsafe(uri, error) from None


def _saved_keys(uri: str, storage_options: dict[str, Any]) -> set[str]:
    return set(_metadata(uri, storage_options).state_dict_metadata)


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter of every rank is finite (collective when a process group is up).

    Each rank checks its own shard (an FSDP2 DTensor's local part) on its device; one all-reduce
    makes every rank agree. Cost: one read of the weights per checkpoint, no transfer to the host.
    """
    shards = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    flags = [torch.isfinite(t.detach()).all() for t in shards if t.numel()]
    device = flags[0].device if flags else torch.device("cpu")
    # One value per rank, summed: no host sync per parameter.
    bad = (~torch.stack(flags)).sum().float() if flags else torch.zeros((), device=device)
    if _distributed():
        bad = bad if dist.get_backend() == "nccl" else bad.cpu()
        dist.all_reduce(bad)
    return float(bad) == 0


def _auxiliary(app_state: dict[str, Any]) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    """Extra (model, optimizer) pairs of an app state (PPO's value model), by name."""
    return {key: value for key, value in app_state.items() if isinstance(value, tuple)}


def _model_and_optim(app_state: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    model = app_state.get(MODEL_KEY)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"app_state[{MODEL_KEY!r}] must be an nn.Module, got {type(model).__name__}")
    return model, app_state.get(OPTIM_KEY)


# ---------------------------------------------------------------------------------------------
# The checkpointer a training job uses
# ---------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """An asynchronous save whose shards are still being written."""

    step: int
    uri: str
    future: Future[None]
    """Completes when the shards are written and the MANIFEST is committed."""


class Checkpointer:
    """Saves, commits, finds, loads and prunes the `stepN/` checkpoints of one job directory."""

    def __init__(
        self,
        directory: str,
        cfg: CheckpointConfig,
        *,
        config_hash: str,
        parent: str | None = None,
        storage_options: dict[str, Any] | None = None,
        train_config: TrainConfig | None = None,
        lease: Lease | None = None,
    ) -> None:
        """`lease`: the job's lease (rank 0's; None on other ranks and outside a job: nothing is fenced)."""
        self.directory = directory.rstrip("/")
        self.lease = lease
        self.cfg = cfg
        self.config_hash = config_hash
        self.skipped: list[str] = []
        """Damaged checkpoints `latest_intact` skipped: '<uri> (<files>)'."""
        self.parent = parent
        self.storage_options = dict(storage_options or {})
        self.train_config = train_config
        self.fs, self.path = storage.filesystem(self.directory, **self.storage_options)
        self._pending: _Pending | None = None
        # A dedicated gloo group for async saves: the upload and commit threads run collectives while
        # training uses the default group, and two threads must never share one process group.
        self._async_group: Any = None
        self._committer: ThreadPoolExecutor | None = None

    # Finding ---------------------------------------------------------------------------------
    def latest(self) -> tuple[int, str] | None:
        """The newest committed (step, uri); uncommitted directories do not count."""
        return manifest.latest_committed(self.fs, self.path, uri=self.directory)

    def committed(self) -> list[tuple[int, str]]:
        """Every committed (step, uri), by step ascending."""
        return manifest.committed_steps(self.fs, self.path, uri=self.directory)

    def damaged_files(self, uri: str) -> list[str]:
        """Files of the committed checkpoint `uri` that are missing or differ from its MANIFEST (collective).

        Rank r re-hashes every world-size-th file of the MANIFEST (sorted by name), so the ranks share
        the reading; the names found are gathered so that every rank returns the same sorted list.
        """
        fs, path = storage.filesystem(uri, **self.storage_options)
        record = manifest.read_manifest(fs, path) or {"files": {}}
        files = sorted(record["files"].items())
        rank, world = _rank(), _world_size()
        bad = [
            rel for rel, expected in files[rank::world] if manifest.verify_file(fs, join(path, rel), expected)
        ]
        if _distributed():
            gathered: list[list[str] | None] = [None] * world
            dist.all_gather_object(gathered, bad)
            bad = [name for part in gathered for name in (part or [])]
        return sorted(bad)

    def latest_intact(self) -> tuple[int, str] | None:
        """The newest committed checkpoint whose files match its MANIFEST (collective); None when none is
        committed. A damaged one is un-committed (its MANIFEST renamed to MANIFEST.damaged.json, so the
        step is saved afresh later) with a warning naming the files, and the previous one is tried.

        Raises PermanentFailure("NoIntactCheckpoint") when checkpoints exist but every one is damaged:
        starting over from scratch would silently discard the run, and retrying cannot repair them.
        """
        damaged: list[str] = []
        self.skipped = []
        for step, uri in reversed(self.committed()):
            bad = self.damaged_files(uri)
            if not bad:
                if damaged and _rank() == 0:
                    log.warning("resuming from %s, the newest intact checkpoint", uri)
                return step, uri
            damaged.append(f"{uri} ({', '.join(bad)})")
            self.skipped.append(damaged[-1])
            if _rank() == 0:
                log.warning(
                    "checkpoint %s is damaged: %s differ from its MANIFEST; skipping it", uri, ", ".join(bad)
                )
            _decided_by_rank0(functools.partial(self._uncommit, uri))
        if damaged:
            raise PermanentFailure(
                "NoIntactCheckpoint",
                f"every committed checkpoint is damaged: {'; '.join(damaged)}. Restore one from the archive "
                "or remove them to start over",
            )
        return None

    # Saving ----------------------------------------------------------------------------------
    def save(self, step: int, app_state: dict[str, Any], *, final: bool = False) -> str:
        """Write step `step` (collective). Synchronous saves are committed on return; async ones by
        `wait()` or the next save. Returns the step directory's URI."""
        self.wait()
        uri = step_uri(self.directory, step)
        model, _ = _model_and_optim(app_state)
        # Such a checkpoint is never written, so never committed or archived: the policy, and every
        # model trained beside it (PPO's value model), which is resumed from the same checkpoint.
        trained = {MODEL_KEY: model, **{name: extra for name, (extra, _) in _auxiliary(app_state).items()}}
        for name, module in trained.items():
            if not weights_finite(module):
                whose = "weights" if name == MODEL_KEY else f"weights of {name!r}"
                raise PermanentFailure(
                    "Diverged",
                    f"the {whose} at step {step} hold NaN or inf; {uri} was not written",
                    step=step,
                )
        if _decided_by_rank0(lambda: self._prepare_dir(uri)) == "committed":
            log.warning("checkpoint %s is already committed; not overwriting it", uri)
            return uri
        _barrier()  # rank 0 has cleared any partial leftovers before anyone writes
        self._write_side_files(uri, app_state)
        state = self._state_to_save(app_state)
        writer = _writer(uri, self.storage_options)
        if self.cfg.async_save:
            group = self._async_pg()
            with _single_process():
                upload = dcp.async_save(state, storage_writer=writer, process_group=group)
            assert isinstance(upload, Future)
            self._committer = self._committer or ThreadPoolExecutor(1, thread_name_prefix="ckpt-commit")
            done = self._committer.submit(self._commit_after, upload, step, uri, final, group)
            self._pending = _Pending(step, uri, done)
        else:
            with _single_process():
                dcp.save(state, storage_writer=writer)
            self._commit(step, uri, final)
        return uri

    def wait(self) -> None:
        """Block until a pending asynchronous save is written and committed (re-raises its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.future.result()

    def _uncommit(self, uri: str) -> None:
        """Rank 0: rename a damaged checkpoint's MANIFEST aside (the lease permitting)."""
        self._fence(f"un-committing the damaged {uri}")
        fs, path = storage.filesystem(uri, **self.storage_options)
        fs.mv(manifest_path(path), damaged_manifest_path(path))

    def _fence(self, action: str) -> None:
        """Rank 0, right before a commit or deletion: raise lease.Fenced unless this attempt holds the
        lease."""
        if self.lease is not None:
            self.lease.check(action)

    def acquire_lease(self) -> None:
        """Take the job directory's lease at start (collective); raises lease.Fenced on every rank when
        a newer attempt holds it. No-op without a lease."""

        def acquire() -> None:
            if self.lease is not None:
                self.lease.acquire()

        _decided_by_rank0(acquire)

    def renew_lease(self) -> bool:
        """Rank 0 while training: renew the lease when due. False when it is lost (the caller stops the
        job; its next save is refused); True otherwise, and on other ranks."""
        if self.lease is None or _rank() != 0:
            return True
        try:
            self.lease.renew()
        except Fenced as error:
            log.error("%s", error.failure.message)
            return False
        return True

    def holds_lease(self) -> bool:
        """Rank 0: whether this attempt still holds the job directory's lease (one read of lease.json),
        asked before writes outside checkpoints (the metrics record: tracking.Tracker). True without a
        lease and on other ranks."""
        if self.lease is None:
            return True
        try:
            self.lease.check("metrics write")
        except Fenced as error:
            log.error("%s", error.failure.message)
            return False
        return True

    def _prepare_dir(self, uri: str) -> str:
        """Rank 0: 'committed' when the step exists, else make an empty directory for it."""
        fs, path = storage.filesystem(uri, **self.storage_options)
        if manifest.read_manifest(fs, path) is not None:
            return "committed"
        self._fence(f"save of {uri}")  # before the first file (or deletion) of this save
        if fs.exists(path):  # a crashed attempt: its shards may come from another world size
            remove_tree(fs, path)
        fs.makedirs(path, exist_ok=True)
        return "fresh"

    def _write_side_files(self, uri: str, app_state: dict[str, Any]) -> None:
        """trainer.pt (every rank's state, gathered) and config.json, written by rank 0."""
        trainer = app_state.get("trainer")
        states = _gather_to_rank0(trainer.state_dict()) if trainer is not None else None
        if _rank() != 0:
            return
        fs, path = storage.filesystem(uri, **self.storage_options)
        if states is not None:
            with storage.open_output(fs, f"{path}/{TRAINER_NAME}") as stream:
                torch.save({"world_size": len(states), "ranks": states}, stream)
        if self.train_config is not None:
            fs.pipe_file(f"{path}/{CONFIG_NAME}", self.train_config.to_json().encode())

    def _state_to_save(self, app_state: dict[str, Any]) -> dict[str, Any]:
        model, optim = _model_and_optim(app_state)
        if optim is None:
            return {MODEL_KEY: get_model_state_dict(model)}
        model_sd, optim_sd = get_state_dict(model, optim)
        state = {MODEL_KEY: model_sd, OPTIM_KEY: optim_sd}
        for name, (extra, extra_optim) in _auxiliary(app_state).items():
            state[f"{name}_{MODEL_KEY}"], state[f"{name}_{OPTIM_KEY}"] = get_state_dict(extra, extra_optim)
        return state

    def _commit(self, step: int, uri: str, final: bool, group: Any = None) -> None:
        """All shards are written: each rank hashes its own, rank 0 writes the MANIFEST last and
        applies retention. Collective over `group` (the default group for synchronous saves)."""
        fs, path = storage.filesystem(uri, **self.storage_options)
        _barrier(group)  # every shard and .metadata are written before anyone reads tensors back
        own = (_hash_own_shards(fs, path, _rank()), self._own_digests(uri))
        hashed = _gather_to_rank0(own, group)  # also waits for every rank

        def commit() -> None:
            assert hashed is not None
            known = {rel: entry for files, _ in hashed for rel, entry in files.items()}
            digests = {key: value for _, part in hashed for key, value in part.items()}
            extra = {"worldSize": _world_size(), **({"final": True} if final else {})}
            record = manifest.build_manifest(
                fs,
                path,
                step=step,
                config_hash=self.config_hash,
                parent=self.parent,
                extra=extra,
                known=known,
                content=identity.content_record(digests),
            )
            self._fence(f"commit of {uri}")  # the last moment before the MANIFEST makes it a checkpoint
            manifest.commit(fs, path, record)
            log.info("committed checkpoint %s (%d files)", uri, len(record["files"]))
            self._apply_retention()

        # Every rank learns the outcome (and so waits for it): nobody returns before the commit is
        # visible, and a refused commit raises Fenced on every rank.
        _decided_by_rank0(commit, group)

    def _own_digests(self, uri: str) -> dict[str, str]:
        """This rank's share of the content identity: tensors read back from storage and hashed."""

        def reader() -> StorageReader:
            return _reader(uri, self.storage_options)

        with _single_process():
            entries = identity.tensor_entries(reader().read_metadata())
            return identity.digests_from_storage(reader, identity.share(entries, _rank(), _world_size()))

    def _commit_after(self, upload: Future[Any], step: int, uri: str, final: bool, group: Any) -> None:
        """Background thread of an async save: wait for the shards, then commit on the async group."""
        upload.result()
        self._commit(step, uri, final, group)

    def _async_pg(self) -> Any:
        if _distributed() and self._async_group is None:
            self._async_group = dist.new_group(backend="gloo")
        return self._async_group

    # Retention and cleaning (rank 0) -----------------------------------------------------------
    def _apply_retention(self) -> None:
        committed = []
        for step, path in manifest.committed_steps(self.fs, self.path):
            record = manifest.read_manifest(self.fs, path) or {}
            committed.append((step, bool(record.get("extra", {}).get("final"))))
        doomed = steps_to_delete(committed, keep_last=self.cfg.keep_last, keep_every=self.cfg.keep_every)
        for step in doomed:
            self._fence(f"retention (deleting step{step})")
            self._delete(step_uri(self.path, step))
            log.info("retention: deleted checkpoint step%d", step)

    def _delete(self, path: str) -> None:
        # MANIFEST first: a deletion cut short leaves an uncommitted directory, never a broken committed one.
        self.fs.rm(manifest_path(path))
        remove_tree(self.fs, path)

    def cleanup_uncommitted(self) -> None:
        """Remove step directories without a MANIFEST (crashed saves): rank 0 removes, every rank waits
        for it (collective) and raises lease.Fenced when the lease forbids it.

        A warning names each one that held files (a save that never committed); an empty folder entry
        (what an object store may keep of a deleted directory) is removed quietly.
        """
        _decided_by_rank0(self._cleanup_uncommitted)

    def _cleanup_uncommitted(self) -> None:
        pending = self._pending.uri if self._pending else None
        for step, path in manifest.step_dirs(self.fs, self.path):
            if manifest.read_manifest(self.fs, path) is None and step_uri(self.directory, step) != pending:
                self._fence(f"removing the uncommitted {path}")
                if _has_files(self.fs, path):
                    log.warning("removing uncommitted checkpoint directory %s", path)
                else:
                    log.debug("removing the empty folder entry %s", path)
                remove_tree(self.fs, path)

    # Loading ---------------------------------------------------------------------------------
    def load(self, uri: str, app_state: dict[str, Any]) -> None:
        """Restore model, optimizer and trainer state from a committed checkpoint (collective)."""
        self.wait()
        problem = _decided_by_rank0(lambda: _load_problem(uri, app_state, self.storage_options))
        if problem:
            raise CheckpointError(problem)
        model, optim = _model_and_optim(app_state)
        reader = _reader(uri, self.storage_options)
        if optim is None:
            load_model_weights(uri, model, storage_options=self.storage_options)
        else:
            model_sd, optim_sd = get_state_dict(model, optim)
            state: dict[str, Any] = {MODEL_KEY: model_sd, OPTIM_KEY: optim_sd}
            extras = _auxiliary(app_state)
            for name, (extra, extra_optim) in extras.items():
                state[f"{name}_{MODEL_KEY}"], state[f"{name}_{OPTIM_KEY}"] = get_state_dict(
                    extra, extra_optim
                )
            _dcp_load(uri, state, reader)
            set_state_dict(model, optim, model_state_dict=state[MODEL_KEY], optim_state_dict=state[OPTIM_KEY])
            for name, (extra, extra_optim) in extras.items():
                set_state_dict(
                    extra,
                    extra_optim,
                    model_state_dict=state[f"{name}_{MODEL_KEY}"],
                    optim_state_dict=state[f"{name}_{OPTIM_KEY}"],
                )
        trainer = app_state.get("trainer")
        if trainer is not None:
            saved = _read_trainer_file(uri, self.storage_options)
            if saved["world_size"] != _world_size():
                log.warning(
                    "%s was saved by %d ranks and is loaded by %d: per-rank trainer state is reused modulo "
                    "%d",
                    uri,
                    saved["world_size"],
                    _world_size(),
                    saved["world_size"],
                )
            trainer.load_state_dict(trainer_state_for_rank(saved, _rank()))


def _load_problem(uri: str, app_state: dict[str, Any], storage_options: dict[str, Any]) -> str | None:
    """Why `uri` cannot restore `app_state`, or None (checked once, by rank 0)."""
    try:
        _require_committed(uri, storage_options)
    except CheckpointError as error:
        return str(error)
    keys = _saved_keys(uri, storage_options)
    if app_state.get(OPTIM_KEY) is not None and not any(k.startswith(f"{OPTIM_KEY}.") for k in keys):
        return f"{uri} holds model weights only (e.g. a soup): use load_model_weights / init_from"
    for name in _auxiliary(app_state):
        if not any(k.startswith(f"{name}_{MODEL_KEY}.") for k in keys):
            return f"{uri} has no {name} model: it was not written by a job of this objective"
    if app_state.get("trainer") is not None:
        fs, path = storage.filesystem(uri, **storage_options)
        if not fs.exists(f"{path}/{TRAINER_NAME}"):
            return f"{uri} has no {TRAINER_NAME}: it cannot resume a training job"
    return None


def _read_trainer_file(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """trainer.pt, unpickled with torch's weights-only unpickler and `trainer_file_globals`: a file in
    storage never runs code here. Raises PermanentFailure(UnsafeCheckpoint) for anything else it names
    (a pickled callable, an unknown class): retrying would read the same bytes."""
    fs, path = storage.filesystem(uri, **storage_options)
    target = f"{path}/{TRAINER_NAME}"
    if not fs.exists(target):
        raise CheckpointError(f"{uri} has no trainer state ({TRAINER_NAME}); it is a weights-only checkpoint")
    with fs.open(target, "rb") as stream, torch.serialization.safe_globals(safe_load.trainer_file_globals()):
        try:
            saved: dict[str, Any] = torch.load(stream, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise unsafe(f"{uri}/{TRAINER_NAME}", error) from None
    return saved


# ---------------------------------------------------------------------------------------------
# Functions on one checkpoint (init_from, soup, export, tests)
# ---------------------------------------------------------------------------------------------


def load_model_weights(
    uri: str,
    model: nn.Module,
    *,
    storage_options: dict[str, Any] | None = None,
    skip_mismatched: bool = False,
) -> None:
    """Load only the model weights of a committed checkpoint into `model` (collective when
    distributed; works for plain, DDP and FSDP2 models of any world size). `skip_mismatched` leaves
    the model's own values where the checkpoint has no weight of that name and shape (a value model
    initialised from a policy: every weight but the head)."""
    options = dict(storage_options or {})
    _require_committed(uri, options)
    wanted = get_model_state_dict(model)
    if skip_mismatched:
        saved = _metadata(uri, options).state_dict_metadata
        wanted = {
            key: value
            for key, value in wanted.items()
            if isinstance(meta := saved.get(f"{MODEL_KEY}.{key}"), TensorStorageMetadata)
            and isinstance(value, torch.Tensor)
            and tuple(meta.size) == tuple(value.shape)
        }
    state = {MODEL_KEY: wanted}
    _dcp_load(uri, state, _reader(uri, options))
    set_model_state_dict(model, state[MODEL_KEY], options=StateDictOptions(strict=not skip_mismatched))


def read_trainer_state(uri: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer state rank 0 saved (step, tokens, last LR, ...); no model needed."""
    options = dict(storage_options or {})
    _require_committed(uri, options)
    return trainer_state_for_rank(_read_trainer_file(uri, options), 0)


def read_train_config(uri: str, *, storage_options: dict[str, Any] | None = None) -> TrainConfig | None:
    """The TrainConfig recorded in a checkpoint's config.json, or None when it has none."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    try:
        blob = fs.cat_file(f"{path}/{CONFIG_NAME}")
    except FileNotFoundError:
        return None
    return TrainConfig.model_validate_json(blob)


def load_full_state_dict(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """All model weights of a committed checkpoint, consolidated in this process (CPU tensors)."""
    options = dict(storage_options or {})
    _require_committed(uri, options)
    metadata = _metadata(uri, options)
    prefix = f"{MODEL_KEY}."
    weights = {
        key[len(prefix) :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not weights:
        raise CheckpointError(f"{uri} holds no model weights")
    state: dict[str, Any] = {MODEL_KEY: weights}
    _dcp_load(uri, state, _reader(uri, options), no_dist=True)
    return state[MODEL_KEY]


def save_model_weights(
    uri: str,
    weights: dict[str, torch.Tensor],
    *,
    step: int,
    config_hash: str | None = None,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
    config_json: str | None = None,
    storage_options: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> str:
    """Write and commit a weights-only checkpoint from one process (soups). Refuses to overwrite.

    With the job's `lease`, checks it before deleting a crashed attempt's files and right before the
    commit (raises lease.Fenced)."""
    options = dict(storage_options or {})
    fs, path = storage.filesystem(uri, **options)
    if manifest.read_manifest(fs, path) is not None:
        raise CheckpointError(f"{uri} is already a committed checkpoint; refusing to overwrite it")
    if lease is not None:
        lease.check(f"save of {uri}")
    remove_tree(fs, path)
    fs.makedirs(path, exist_ok=True)
    if config_json is not None:
        fs.pipe_file(f"{path}/{CONFIG_NAME}", config_json.encode())
    with _single_process():
        dcp.save({MODEL_KEY: weights}, storage_writer=_writer(uri, options), no_dist=True)
    content = identity.content_record(identity.digests_of(weights, f"{MODEL_KEY}."))
    record = manifest.build_manifest(
        fs, path, step=step, config_hash=config_hash, parent=parent, extra=extra, content=content
    )
    if lease is not None:
        lease.check(f"commit of {uri}")
    manifest.commit(fs, path, record)
    return uri


def manifest_sha256(uri: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of a checkpoint's MANIFEST.json bytes: names one exact committed checkpoint."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    return storage.sha256_file(fs, manifest_path(path))


def config_json_of(uri: str, *, storage_options: dict[str, Any] | None = None) -> str | None:
    """The raw config.json of a checkpoint, or None."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    try:
        return bytes(fs.cat_file(f"{path}/{CONFIG_NAME}")).decode()
    except FileNotFoundError:
        return None


__all__ = [
    "CheckpointError",
    "Checkpointer",
    "config_json_of",
    "load_full_state_dict",
    "load_model_weights",
    "manifest_sha256",
    "read_train_config",
    "read_trainer_state",
    "save_model_weights",
    "steps_to_delete",
]
