"""The Checkpointer a training job uses: save, commit, find, resume and prune its `stepN/` checkpoints.

It drives the pieces beside it: checkpoint I/O (io.py), the retention and save policy (policy.py), the
lease fence (fencing.py) and rank-0 decisions every rank shares (collective.py). See the package's
docstring for the layout of a checkpoint and the guarantees.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.checkpoint.storage import StorageReader

from olmo_trainer import identity, manifest, storage
from olmo_trainer.checkpoint import collective
from olmo_trainer.checkpoint.fencing import Fence
from olmo_trainer.checkpoint.io import (
    MODEL_KEY,
    OPTIM_KEY,
    dcp_load,
    has_files,
    hash_own_shards,
    load_model_weights,
    read_trainer_file,
    remove_tree,
    require_committed,
    saved_keys,
    storage_reader,
    storage_writer,
    trainer_state_for_rank,
)
from olmo_trainer.checkpoint.policy import steps_to_delete
from olmo_trainer.config import CheckpointConfig, TrainConfig
from olmo_trainer.errors import CheckpointError
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.layout import (
    CONFIG_NAME,
    TRAINER_NAME,
    damaged_manifest_path,
    join,
    manifest_path,
    step_uri,
)
from olmo_trainer.lease import Lease

log = logging.getLogger(__name__)


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
    if collective.is_distributed():
        bad = bad if dist.get_backend() == "nccl" else bad.cpu()
        dist.all_reduce(bad)
    return float(bad) == 0


def auxiliary(app_state: dict[str, Any]) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    """Extra (model, optimizer) pairs of an app state (PPO's value model), by name."""
    return {key: value for key, value in app_state.items() if isinstance(value, tuple)}


def model_and_optim(app_state: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    model = app_state.get(MODEL_KEY)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"app_state[{MODEL_KEY!r}] must be an nn.Module, got {type(model).__name__}")
    return model, app_state.get(OPTIM_KEY)


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
        trainer_types: Sequence[Any] = (),
    ) -> None:
        """`lease`: the job's lease (rank 0's; None on other ranks and outside a job: nothing is fenced).
        `trainer_types`: the classes the trainer state may hold besides plain data (read_trainer_file)."""
        self.trainer_types = tuple(trainer_types)
        self.directory = directory.rstrip("/")
        self.fence = Fence(lease)
        """Checks the job's lease before every commit and deletion (fencing.py)."""
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
        rank, world = collective.rank(), collective.world_size()
        bad = [
            rel for rel, expected in files[rank::world] if manifest.verify_file(fs, join(path, rel), expected)
        ]
        if collective.is_distributed():
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
                if damaged and collective.rank() == 0:
                    log.warning("resuming from %s, the newest intact checkpoint", uri)
                return step, uri
            damaged.append(f"{uri} ({', '.join(bad)})")
            self.skipped.append(damaged[-1])
            if collective.rank() == 0:
                log.warning(
                    "checkpoint %s is damaged: %s differ from its MANIFEST; skipping it", uri, ", ".join(bad)
                )
            collective.decided_by_rank0(functools.partial(self._uncommit, uri))
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
        model, _ = model_and_optim(app_state)
        # Such a checkpoint is never written, so never committed or archived: the policy, and every
        # model trained beside it (PPO's value model), which is resumed from the same checkpoint.
        trained = {MODEL_KEY: model, **{name: extra for name, (extra, _) in auxiliary(app_state).items()}}
        for name, module in trained.items():
            if not weights_finite(module):
                whose = "weights" if name == MODEL_KEY else f"weights of {name!r}"
                raise PermanentFailure(
                    "Diverged",
                    f"the {whose} at step {step} hold NaN or inf; {uri} was not written",
                    step=step,
                )
        if collective.decided_by_rank0(lambda: self._prepare_dir(uri)) == "committed":
            log.warning("checkpoint %s is already committed; not overwriting it", uri)
            return uri
        collective.barrier()  # rank 0 has cleared any partial leftovers before anyone writes
        self._write_side_files(uri, app_state)
        state = self._state_to_save(app_state)
        writer = storage_writer(uri, self.storage_options)
        if self.cfg.async_save:
            group = self._async_pg()
            with collective.single_process():
                upload = dcp.async_save(state, storage_writer=writer, process_group=group)
            assert isinstance(upload, Future)
            self._committer = self._committer or ThreadPoolExecutor(1, thread_name_prefix="ckpt-commit")
            done = self._committer.submit(self._commit_after, upload, step, uri, final, group)
            self._pending = _Pending(step, uri, done)
        else:
            with collective.single_process():
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
        self.fence.check(f"un-committing the damaged {uri}")
        fs, path = storage.filesystem(uri, **self.storage_options)
        fs.mv(manifest_path(path), damaged_manifest_path(path))

    def _prepare_dir(self, uri: str) -> str:
        """Rank 0: 'committed' when the step exists, else make an empty directory for it."""
        fs, path = storage.filesystem(uri, **self.storage_options)
        if manifest.read_manifest(fs, path) is not None:
            return "committed"
        self.fence.check(f"save of {uri}")  # before the first file (or deletion) of this save
        if fs.exists(path):  # a crashed attempt: its shards may come from another world size
            remove_tree(fs, path)
        fs.makedirs(path, exist_ok=True)
        return "fresh"

    def _write_side_files(self, uri: str, app_state: dict[str, Any]) -> None:
        """trainer.pt (every rank's state, gathered) and config.json, written by rank 0."""
        trainer = app_state.get("trainer")
        states = collective.gather_to_rank0(trainer.state_dict()) if trainer is not None else None
        if collective.rank() != 0:
            return
        fs, path = storage.filesystem(uri, **self.storage_options)
        if states is not None:
            with storage.open_output(fs, f"{path}/{TRAINER_NAME}") as stream:
                torch.save({"world_size": len(states), "ranks": states}, stream)
        if self.train_config is not None:
            fs.pipe_file(f"{path}/{CONFIG_NAME}", self.train_config.to_json().encode())

    def _state_to_save(self, app_state: dict[str, Any]) -> dict[str, Any]:
        model, optim = model_and_optim(app_state)
        if optim is None:
            return {MODEL_KEY: get_model_state_dict(model)}
        model_sd, optim_sd = get_state_dict(model, optim)
        state = {MODEL_KEY: model_sd, OPTIM_KEY: optim_sd}
        for name, (extra, extra_optim) in auxiliary(app_state).items():
            state[f"{name}_{MODEL_KEY}"], state[f"{name}_{OPTIM_KEY}"] = get_state_dict(extra, extra_optim)
        return state

    def _commit(self, step: int, uri: str, final: bool, group: Any = None) -> None:
        """All shards are written: each rank hashes its own, rank 0 writes the MANIFEST last and
        applies retention. Collective over `group` (the default group for synchronous saves)."""
        fs, path = storage.filesystem(uri, **self.storage_options)
        collective.barrier(group)  # every shard and .metadata are written before anyone reads tensors back
        own = (hash_own_shards(fs, path, collective.rank()), self._own_digests(uri))
        hashed = collective.gather_to_rank0(own, group)  # also waits for every rank

        def commit() -> None:
            assert hashed is not None
            known = {rel: entry for files, _ in hashed for rel, entry in files.items()}
            digests = {key: value for _, part in hashed for key, value in part.items()}
            extra = {"worldSize": collective.world_size(), **({"final": True} if final else {})}
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
            self.fence.check(f"commit of {uri}")  # the last moment before the MANIFEST makes it a checkpoint
            manifest.commit(fs, path, record)
            log.info("committed checkpoint %s (%d files)", uri, len(record["files"]))
            self._apply_retention()

        # Every rank learns the outcome (and so waits for it): nobody returns before the commit is
        # visible, and a refused commit raises Fenced on every rank.
        collective.decided_by_rank0(commit, group)

    def _own_digests(self, uri: str) -> dict[str, str]:
        """This rank's share of the content identity: tensors read back from storage and hashed."""

        def reader() -> StorageReader:
            return storage_reader(uri, self.storage_options)

        with collective.single_process():
            entries = identity.tensor_entries(reader().read_metadata())
            return identity.digests_from_storage(
                reader, identity.share(entries, collective.rank(), collective.world_size())
            )

    def _commit_after(self, upload: Future[Any], step: int, uri: str, final: bool, group: Any) -> None:
        """Background thread of an async save: wait for the shards, then commit on the async group."""
        upload.result()
        self._commit(step, uri, final, group)

    def _async_pg(self) -> Any:
        if collective.is_distributed() and self._async_group is None:
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
            self.fence.check(f"retention (deleting step{step})")
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
        collective.decided_by_rank0(self._cleanup_uncommitted)

    def _cleanup_uncommitted(self) -> None:
        pending = self._pending.uri if self._pending else None
        for step, path in manifest.step_dirs(self.fs, self.path):
            if manifest.read_manifest(self.fs, path) is None and step_uri(self.directory, step) != pending:
                self.fence.check(f"removing the uncommitted {path}")
                if has_files(self.fs, path):
                    log.warning("removing uncommitted checkpoint directory %s", path)
                else:
                    log.debug("removing the empty folder entry %s", path)
                remove_tree(self.fs, path)

    # Loading ---------------------------------------------------------------------------------
    def load(self, uri: str, app_state: dict[str, Any]) -> None:
        """Restore model, optimizer and trainer state from a committed checkpoint (collective)."""
        self.wait()
        problem = collective.decided_by_rank0(lambda: load_problem(uri, app_state, self.storage_options))
        if problem:
            raise CheckpointError(problem)
        model, optim = model_and_optim(app_state)
        reader = storage_reader(uri, self.storage_options)
        if optim is None:
            load_model_weights(uri, model, storage_options=self.storage_options)
        else:
            model_sd, optim_sd = get_state_dict(model, optim)
            state: dict[str, Any] = {MODEL_KEY: model_sd, OPTIM_KEY: optim_sd}
            extras = auxiliary(app_state)
            for name, (extra, extra_optim) in extras.items():
                state[f"{name}_{MODEL_KEY}"], state[f"{name}_{OPTIM_KEY}"] = get_state_dict(
                    extra, extra_optim
                )
            dcp_load(uri, state, reader)
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
            saved = read_trainer_file(uri, self.storage_options, self.trainer_types)
            if saved["world_size"] != collective.world_size():
                log.warning(
                    "%s was saved by %d ranks and is loaded by %d: per-rank trainer state is reused modulo "
                    "%d",
                    uri,
                    saved["world_size"],
                    collective.world_size(),
                    saved["world_size"],
                )
            trainer.load_state_dict(trainer_state_for_rank(saved, collective.rank()))


def load_problem(uri: str, app_state: dict[str, Any], storage_options: dict[str, Any]) -> str | None:
    """Why `uri` cannot restore `app_state`, or None (checked once, by rank 0)."""
    try:
        require_committed(uri, storage_options)
    except CheckpointError as error:
        return str(error)
    keys = saved_keys(uri, storage_options)
    if app_state.get(OPTIM_KEY) is not None and not any(k.startswith(f"{OPTIM_KEY}.") for k in keys):
        return f"{uri} holds model weights only (e.g. a soup): use load_model_weights / init_from"
    for name in auxiliary(app_state):
        if not any(k.startswith(f"{name}_{MODEL_KEY}.") for k in keys):
            return f"{uri} has no {name} model: it was not written by a job of this objective"
    if app_state.get("trainer") is not None:
        fs, path = storage.filesystem(uri, **storage_options)
        if not fs.exists(f"{path}/{TRAINER_NAME}"):
            return f"{uri} has no {TRAINER_NAME}: it cannot resume a training job"
    return None
