"""Packing rollouts for training: the training forward sees the sampled sequences exactly, so its
response log-probs equal those of the logits the tokens were sampled from."""

from __future__ import annotations

import torch

from olmo_trainer.config import ModelConfig
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.model import Transformer
from olmo_trainer.rollouts import pack, response_logprobs, response_values

CONFIG = ModelConfig.preset("tiny", init_std=0.3)
PROMPTS = [[5, 17, 99], [3, 1, 4, 1, 5, 9], [42]]


def test_pack_moves_left_padding_to_the_right() -> None:
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    rollout = generate(
        model,
        PROMPTS,
        Sampling(max_new_tokens=5, temperature=0),
        eos_token_id=CONFIG.eos_token_id,
        pad_token_id=CONFIG.pad_token_id,
        vocab_size=CONFIG.vocab_size,
    )
    packed = pack(rollout, pad_token_id=CONFIG.pad_token_id)
    assert packed.starts.tolist() == [3, 6, 1]
    for row, prompt in enumerate(PROMPTS):
        n = len(prompt)
        assert packed.ids[row, :n].tolist() == prompt
        assert packed.ids[row, n : n + 5].tolist() == rollout.responses[row].tolist()
        assert packed.ids[row, n + 5 :].tolist() == [CONFIG.pad_token_id] * (6 - n)
    part = packed.select(slice(2, 3))
    assert part.ids.shape == (1, 1 + 5)


def test_training_logprobs_equal_the_sampling_distribution() -> None:
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    temperature = 0.7
    rollout = generate(
        model,
        PROMPTS,
        Sampling(max_new_tokens=7, temperature=temperature),
        eos_token_id=CONFIG.eos_token_id,
        pad_token_id=CONFIG.pad_token_id,
        vocab_size=CONFIG.vocab_size,
        generator=torch.Generator().manual_seed(5),
        return_logits=True,
    )
    assert rollout.logits is not None
    packed = pack(rollout, pad_token_id=CONFIG.pad_token_id)
    with torch.no_grad():
        got = response_logprobs(
            model(packed.ids), packed, temperature=temperature, vocab_size=CONFIG.vocab_size
        )
    sampled = rollout.logits[..., : CONFIG.vocab_size] / temperature
    expected = torch.log_softmax(sampled, dim=-1).gather(
        -1, rollout.responses.clamp(max=CONFIG.vocab_size - 1)[..., None]
    )
    mask = rollout.response_mask
    torch.testing.assert_close(got[mask], expected.squeeze(-1)[mask], rtol=0, atol=1e-5)
    # Values: the output at the position before each response token.
    values = torch.arange(packed.ids.numel(), dtype=torch.float32).view(packed.ids.shape)
    picked = response_values(values[..., None], packed)
    assert picked[0, 0] == values[0, 2] and picked[1, 3] == values[1, 6 + 3 - 1]
