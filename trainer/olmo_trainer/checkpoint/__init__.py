"""Sharded checkpoints: DCP save/load, atomic commit by MANIFEST, retention, resharding on load.

A checkpoint is a directory `<directory>/stepN/` holding

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint shards of {"model": ..., "optim": ...}
                                    (+ "<name>_model", "<name>_optim" for each extra trained model of
                                    the app state, e.g. PPO's value model: "value_model", "value_optim")
    trainer.pt                      {"world_size": W, "ranks": [rank 0's trainer state, ..., rank W-1's]}
    config.json                     the TrainConfig of the job (when given): the checkpoint describes itself
    MANIFEST.json                   sha256 of every other file, written LAST by rank 0 (see manifest.py);
                                    each rank hashes the shards it wrote, so the commit scales with ranks

A directory without a valid MANIFEST does not exist: `latest_intact()` ignores it and `cleanup_uncommitted()`
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

The package, one concern a module (as OLMo-core splits io.py / train/checkpoint.py /
callbacks/checkpointer.py; torchtitan's CheckpointStorage is as narrow as storage.py):

    io.py            DCP shards, trainer.pt and config.json written and read; one-off loads and saves
    policy.py        when the loop saves and which checkpoints retention keeps (pure)
    fencing.py       the lease checks before every commit and deletion
    collective.py    rank-0 decisions that every rank shares; process-group helpers
    checkpointer.py  the Checkpointer a job uses, driving the four above

Fencing (lease.py, fencing.py): given the job's `lease`, rank 0 checks it right before every MANIFEST
write and every deletion (retention, clearing a crashed save, un-committing a damaged checkpoint), and
before a save writes its first file. An attempt that no longer holds the lease raises lease.Fenced on
every rank and writes nothing more: two attempts alive at once never both write one job directory.

    ckpt = Checkpointer(f"{cfg.save_dir}/checkpoints", cfg.checkpoint, config_hash=cfg.config_hash(),
                        parent=cfg.init_from, train_config=cfg)
    if (found := ckpt.latest_intact()) is not None:
        ckpt.load(found[1], app_state)
    ...
    ckpt.save(step, app_state)          # collective: every rank calls it
    ckpt.save(step, app_state, final=True); ckpt.wait()
"""

from olmo_trainer.checkpoint.checkpointer import Checkpointer, weights_finite
from olmo_trainer.checkpoint.io import (
    UNSAFE_CHECKPOINT_REASON,
    config_json_of,
    load_full_state_dict,
    load_model_weights,
    manifest_sha256,
    read_train_config,
    read_trainer_state,
    save_model_weights,
)
from olmo_trainer.checkpoint.policy import save_due, steps_to_delete
from olmo_trainer.errors import CheckpointError

__all__ = [
    "UNSAFE_CHECKPOINT_REASON",
    "CheckpointError",
    "Checkpointer",
    "config_json_of",
    "load_full_state_dict",
    "load_model_weights",
    "manifest_sha256",
    "read_train_config",
    "read_trainer_state",
    "save_due",
    "save_model_weights",
    "steps_to_delete",
    "weights_finite",
]
