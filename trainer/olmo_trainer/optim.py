"""AdamW with OLMo 2's parameter groups.

OLMo 2 applies weight decay to every weight except the input embedding (OLMo-core's OLMo 2 configs
override `embeddings.weight` to weight_decay 0). Norm weights *are* decayed, as in the reference;
only embeddings are special-cased, and `optim.decay_embeddings` turns even that off.

Groups are found by module type (`nn.Embedding`), not by parameter name, so the same code works on a
bare, DDP-wrapped (`module.` prefix) or FSDP2-sharded model. Build the optimizer after wrapping.
"""

from __future__ import annotations

import torch
from torch import nn

from olmo_trainer.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, object]]:
    """Two groups: decayed weights, and embeddings (weight decay 0 unless decay_embeddings)."""
    embedding_ids = {
        id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        exempt = id(param) in embedding_ids and not cfg.decay_embeddings
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, lr: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95, eps 1e-8 by default); the schedule sets each step's LR afterwards."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=lr, betas=cfg.betas, eps=cfg.eps)
