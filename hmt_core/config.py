"""The hyper-parameters of the two memory wrappers, stored beside their weights as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Memory vectors are final hidden states: on SmolLM2-135M their norm is about 55 against about 3.2 for a token
# embedding, so fed back as they are they drown the tokens around them (reading got worse than with no memory).
MEMORY_INPUT_NORMS = ("embedding", "none")
RECALL_CHANNELS = ("memory", "lexical", "token", "sentence")


def check_memory_input_norm(value: str) -> None:
    """Refuse an unknown memory_input_norm, so that a typo in a config does not pass silently."""
    if value not in MEMORY_INPUT_NORMS:
        raise ValueError(f"memory_input_norm must be one of {MEMORY_INPUT_NORMS}, not {value!r}")


@dataclass
class HMTConfig:
    """HMT sizes (see README, 'What HMT computes here'): L new tokens per segment, k sensory tokens,
    j = L * summary_fraction tokens in the summary pass, h = recall width (None: the backbone's MLP width, else d),
    N cached memories.
    memory_input_norm 'none' feeds memory vectors to the backbone as they are (the paper's code); 'embedding' feeds
    them at the mean norm of its token embeddings. On SmolLM2-135M 'embedding' lowered perplexity (38.3 to 36.8) but
    cost recall (held-out hit@3 0.465 to 0.285), and recall is what answers and citations rest on.

    Multi-channel recall: token_key_layer (hidden states after that decoder layer, None:
    no token keys) gives each segment token_keys_per_segment keys of token_key_width dims; recall_fusion weighs each
    channel's standardised scores (None: memory recall only, as in every checkpoint from before the channels) and
    recall_temperature divides the fused score before the softmax."""

    segment_length: int = 256
    sensory_size: int = 32
    summary_fraction: float = 0.5
    recall_size: int | None = None
    cache_size: int = 300
    memory_input_norm: str = "none"
    token_key_layer: int | None = None
    token_key_width: int = 128
    token_keys_per_segment: int = 16
    recall_fusion: dict[str, float] | None = None
    recall_temperature: float = 1.0
    kind: str = "hmt"

    @property
    def summary_length(self) -> int:
        return max(1, int(self.segment_length * self.summary_fraction))

    def __post_init__(self) -> None:
        if self.segment_length < 1 or self.sensory_size < 0 or self.cache_size < 1:
            raise ValueError(f"invalid HMT sizes: {self}")
        if not 0 < self.summary_fraction <= 1:
            raise ValueError("summary_fraction must be in (0, 1]")
        check_memory_input_norm(self.memory_input_norm)
        unknown = set(self.recall_fusion or {}) - set(RECALL_CHANNELS)
        if unknown:
            raise ValueError(f"recall_fusion names unknown channels {sorted(unknown)}; known: {RECALL_CHANNELS}")
        if self.recall_temperature <= 0 or self.token_key_width < 1 or self.token_keys_per_segment < 1:
            raise ValueError(f"invalid recall settings: {self}")

    @property
    def channels(self) -> tuple[str, ...]:
        """The recall channels this config can use: memory always; lexical, token and sentence where fusion weighs
        them (token also needs token keys; sentence also needs the model's sentence embedder)."""
        fusion = self.recall_fusion or {}
        return tuple(c for c in RECALL_CHANNELS if c == "memory" or (c in fusion and (c != "token" or
                                                                                     self.token_key_layer)))


@dataclass
class RMTConfig:
    """RMT sizes: L tokens per segment between m read and m write memory tokens."""

    segment_length: int = 256
    num_memory_tokens: int = 16
    memory_input_norm: str = "embedding"
    kind: str = "rmt"

    def __post_init__(self) -> None:
        if self.segment_length < 1 or self.num_memory_tokens < 1:
            raise ValueError(f"invalid RMT sizes: {self}")
        check_memory_input_norm(self.memory_input_norm)


def config_to_dict(config: HMTConfig | RMTConfig) -> dict:
    """A JSON-ready dict that names its kind."""
    return asdict(config)


def config_from_dict(data: dict) -> HMTConfig | RMTConfig:
    """Rebuild a config from config_to_dict's output; unknown keys are refused so that typos do not pass silently."""
    cls = {"hmt": HMTConfig, "rmt": RMTConfig}.get(data.get("kind", "hmt"))
    if cls is None:
        raise ValueError(f"unknown memory kind {data.get('kind')!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    data = {"memory_input_norm": "none", **data}  # checkpoints from before the option fed memories as they are
    return cls(**data)
