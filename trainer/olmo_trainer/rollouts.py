"""From sampled rollouts to training rows: packing, per-token log-probs and values of the responses.

`generate` returns left-padded prompts and right-padded responses. To train on them, each row is
re-packed as `prompt + response` starting at position 0 and right-padded (`pack`): the plain causal
forward of the model then sees exactly the sequence that was sampled, with the positions it was
sampled at, and no attention mask is needed (padding only ever follows the real tokens).

Response token j of row b sits at position starts[b] + j and is predicted by the logits at the
position before it. `response_logprobs` gathers those (B, N) log-probabilities under the sampling
distribution: logits divided by the sampling temperature and ids >= vocab_size excluded, as
`generate.choose_tokens` samples (open-instruct divides by the temperature the same way).

    packed = pack(rollout, pad_token_id=cfg.pad_token_id)
    logp = response_logprobs(model(packed.ids), packed, temperature=1.0, vocab_size=cfg.vocab_size)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from olmo_trainer.generate import Rollout


@dataclass
class Packed:
    """Rows `prompt + response` for a training forward."""

    ids: torch.Tensor
    """(B, L) token ids, right-padded."""
    starts: torch.Tensor
    """(B,) position of each row's first response token (its prompt length)."""
    mask: torch.Tensor
    """(B, N) bool: real response tokens (as Rollout.response_mask)."""

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def select(self, rows: slice | torch.Tensor) -> Packed:
        """A subset of rows (a micro-batch), trimmed to its longest row."""
        ids, starts, mask = self.ids[rows], self.starts[rows], self.mask[rows]
        width = int((starts + mask.shape[1]).max())
        return Packed(ids=ids[:, :width], starts=starts, mask=mask)


def pack(rollout: Rollout, *, pad_token_id: int) -> Packed:
    """Re-pack a rollout's rows as prompt (without its left padding) + response, right-padded."""
    prompt_lengths = rollout.prompt_mask.sum(dim=1)  # (B,)
    B, P = rollout.prompts.shape
    N = rollout.responses.shape[1]
    # Shift each prompt left by its padding: gather columns (pad + i) for i < P (clamped past the end).
    pad = P - prompt_lengths  # (B,)
    columns = (torch.arange(P, device=pad.device)[None, :] + pad[:, None]).clamp(max=P - 1)  # (B, P)
    prompts = rollout.prompts.gather(1, columns)
    prompts = torch.where(
        torch.arange(P, device=pad.device)[None, :] < prompt_lengths[:, None], prompts, pad_token_id
    )
    ids = torch.full((B, P + N), pad_token_id, dtype=torch.long, device=prompts.device)
    ids[:, :P] = prompts
    positions = prompt_lengths[:, None] + torch.arange(N, device=pad.device)[None, :]  # (B, N)
    ids.scatter_(1, positions, rollout.responses)
    return Packed(ids=ids, starts=prompt_lengths, mask=rollout.response_mask.clone())


def _predicting_positions(packed: Packed) -> torch.Tensor:
    """(B, N) positions whose outputs predict each response token (one before it)."""
    N = packed.mask.shape[1]
    positions = packed.starts[:, None] + torch.arange(N, device=packed.starts.device)[None, :] - 1
    return positions.clamp(max=packed.ids.shape[1] - 1)


def response_logprobs(
    logits: torch.Tensor, packed: Packed, *, temperature: float, vocab_size: int
) -> torch.Tensor:
    """(B, N) log-probabilities of the response tokens under softmax(logits / temperature) over the
    real vocabulary. logits (B, L, V) from the model on `packed.ids`. Masked entries are meaningless
    (multiply by `packed.mask`)."""
    before = _predicting_positions(packed)  # (B, N)
    V = logits.shape[-1]
    chosen = logits.gather(1, before[..., None].expand(-1, -1, V)).float() / temperature  # (B, N, V)
    if vocab_size < V:
        outside = torch.arange(V, device=logits.device) >= vocab_size
        chosen = chosen.masked_fill(outside, -torch.inf)
    targets = packed.ids.gather(1, (before + 1).clamp(max=packed.ids.shape[1] - 1))  # (B, N)
    targets = torch.where(packed.mask, targets, 0)  # padding ids may lie outside the vocabulary
    return torch.log_softmax(chosen, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def response_values(values: torch.Tensor, packed: Packed) -> torch.Tensor:
    """(B, N) value estimates of the state before each response token, from a value model's (B, L)
    or (B, L, 1) outputs on `packed.ids` (the value of the position that predicts the token)."""
    if values.dim() == 3:
        values = values.squeeze(-1)
    return values.float().gather(1, _predicting_positions(packed))


@dataclass
class RLBatch:
    """One micro-batch of a rollout: packed rows and the per-token constants of the losses."""

    packed: Packed
    old_logprobs: torch.Tensor
    """(B, N) policy log-probs at sampling time (detached)."""
    ref_logprobs: torch.Tensor | None
    """(B, N) frozen reference log-probs, or None when klBeta is 0."""
    advantages: torch.Tensor
    """GRPO: (B,) per sequence; PPO: (B, N) per token (whitened)."""
    sums: dict[str, float]
    """Per-sequence metric sums of these rows (rewards, accuracy, lengths, groups)."""
    values: torch.Tensor | None = None
    """PPO: (B, N) value estimates at sampling time."""
    returns: torch.Tensor | None = None
    """PPO: (B, N) GAE returns."""
