"""The data pipeline: token arrays -> weighted mixture -> seeded global order -> this rank's batches.

    from olmo_trainer.data import DistributedBatches, build_dataset

    dataset = build_dataset(cfg.data, seed=seed, work_dir=work_dir)      # TokenDataset
    batches = DistributedBatches(dataset, global_batch_size=..., micro_batch_size=..., rank=r,
                                 world_size=w, seed=seed, work_dir=work_dir)
    for micro_batches in batches:                                          # one optimizer step
        ...

Modules: `arrays` (headerless token files, fsspec cache), `mixture` (instances, weighted mixture),
`order` (global order, distributed batches, resume), `ngram` (repeated n-gram filter), `synth`
(synthetic corpora), `tokenizer` and `prepare` (JSONL -> token arrays).
"""

from olmo_trainer.data.mixture import TokenDataset, build_dataset, mixture_counts
from olmo_trainer.data.ngram import repeated_ngram_mask
from olmo_trainer.data.order import DistributedBatches, global_indices
from olmo_trainer.data.prepare import prepare
from olmo_trainer.data.synth import synthesize, write_synthetic

__all__ = [
    "DistributedBatches",
    "TokenDataset",
    "build_dataset",
    "global_indices",
    "mixture_counts",
    "prepare",
    "repeated_ngram_mask",
    "synthesize",
    "write_synthetic",
]
