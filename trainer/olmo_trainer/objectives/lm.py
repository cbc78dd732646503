"""Next-token language-modelling loss with OLMo 2's z-loss (pretraining and annealing).

Every position predicts the next token and none is ignored: documents are EOS-separated inside a
window, and the EOS is a token worth predicting. The model sees the whole window (B, T) so its shapes
stay multiples of the sequence length; the last position has no target and is left out of the mean.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LMLoss(NamedTuple):
    """`loss` is what backward() runs on; `ce` and `z` are detached, for logging."""

    loss: torch.Tensor
    ce: torch.Tensor
    z: torch.Tensor


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, *, z_loss: float) -> LMLoss:
    """Cross-entropy of logits (B, T, V) against tokens shifted by one, plus z_loss * mean(lse^2)."""
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    targets = tokens[:, 1:]  # (B, T-1)
    lse = torch.logsumexp(logits, dim=-1)  # (B, T-1)
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    ce = (lse - target_logits).mean()
    z = z_loss * lse.square().mean()
    return LMLoss(loss=ce + z, ce=ce.detach(), z=z.detach())
