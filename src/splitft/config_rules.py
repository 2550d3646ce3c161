"""Every check of a config value, in one place: :meth:`splitft.config.Config.validate` (and
:func:`splitft.config.check_data`, for what the data layer reads) runs these rules.

Each rule is ``(dotted key, test, what is allowed)``; the first value that fails its test is one
``error: key = value: what is allowed`` line. Methods add their own rules
(:meth:`splitft.methods.base.Method.config_rules`), found through the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from splitft.choices import (
    AGGREGATIONS,
    CLOCK_ORDERS,
    COMPUTE_DTYPES,
    CONDITIONS,
    CUT_RANK_SIDES,
    DEVICE_PRESETS,
    DEVICES,
    GENERATION_METRICS,
    PARTITIONS,
    POLICY_SIGNALS,
    PREDICT_FROM,
    SCHEDULES,
    SERVER_ADAPTERS,
    SPLIT_SHAPES,
)
from splitft.config_codec import ADAPTER_FORMATS, CUT_FORMATS, WIRE_DTYPES, cut_format_ok
from splitft.registry import METHODS, POLICIES, RUNTIMES

Config = Any
"""A :class:`splitft.config.Config` (named, not imported: the config imports these rules)."""

# fmt: off
# Lowest allowed value of every bounded number field (0 where the docs give 0 a meaning).
MINIMUM = {
    "model.keep_layers": 0, "data.max_length": 2, "data.max_samples": 0, "data.bins": 1,
    "data.samples_per_client": 0,
    "federation.num_clients": 1, "federation.rounds": 1, "federation.local_steps": 1,
    "lora.r_cut": 1, "lora.r_others": 1, "train.batch_size": 1, "train.warmup_steps": 0,
    "train.weight_decay": 0, "train.max_grad_norm": 0, "eval.every": 1, "eval.max_samples": 1,
    "eval.batch_size": 1, "threads": 0, "policy.heldout_samples": 1, "policy.tolerance": 0,
    "policy.slack": 0, "call_timeout_s": 0, "seed": 0, "eval.generation_samples": 1,
    "eval.max_new_tokens": 1, "loss_chunk": 0, "policy.heldout_every": 1,
}
# fmt: on
POSITIVE = ("lora.alpha", "train.lr", "devices.change_every_s")
FRACTIONS = ("data.test_fraction", "data.validation_fraction", "data.heldout_fraction")


def rules(cfg: Config, field_types: Mapping[str, Any]) -> list[tuple[str, Callable[[Any], bool], str]]:
    """(key, test, what is allowed) of every check of ``cfg`` (``field_types``: the config's
    fields and their types); built per call, so registered methods and policies count."""
    n, r_others, vf = cfg.federation.num_clients, cfg.lora.r_others, cfg.data.validation_fraction
    # fmt: off
    choices = {"train.schedule": SCHEDULES, "codec.activation_dtype": WIRE_DTYPES,
               "codec.gradient_dtype": WIRE_DTYPES, "aggregation": AGGREGATIONS, "runtime": RUNTIMES.names(),
               "device": DEVICES, "data.partition": PARTITIONS, "policy.name": POLICIES.names(),
               "devices.preset": DEVICE_PRESETS, "devices.order": CLOCK_ORDERS, "method": METHODS.names(),
               "lora.cut_rank_sides": CUT_RANK_SIDES, "split.server_adapters": SERVER_ADAPTERS,
               "compute_dtype": COMPUTE_DTYPES, "split.shape": SPLIT_SHAPES,
               "policy.signal": POLICY_SIGNALS, "policy.predict_from": PREDICT_FROM}
    # fmt: on
    return [
        *((key, lambda v, lo=lo: v >= lo, f"must be >= {lo}") for key, lo in MINIMUM.items()),
        *((key, lambda v: v > 0, "must be > 0") for key in POSITIVE),
        ("data.alpha", lambda v: 0 < v < math.inf, "must be > 0 and finite"),
        *((key, lambda v: 0 <= v < 1, "must be in [0, 1)") for key in FRACTIONS),
        ("data.test_fraction", lambda v: v + vf < 1, f"must be < 1 - data.validation_fraction = {1 - vf:g}"),
        *((key, lambda v, a=a: v in a, f"must be one of {', '.join(a)}") for key, a in choices.items()),
        ("federation.clients_per_round", lambda v: 0 <= v <= n, f"must be in [0, num_clients={n}]"),
        ("lora.r_cut", lambda v: v <= r_others, f"must be <= lora.r_others = {r_others}"),
        ("split.cuts", lambda v: all(c >= 1 for c in v), "every cut must be >= 1"),
        ("split.cuts", lambda v: len(v) in (0, 1, n), f"must hold 0, 1 or num_clients={n} values"),
        *split_rules(cfg),
        ("data.partition_by", lambda v: bool(v) and v == v.strip(), "must be 'length' or a meta column name"),
        (
            "eval.generation_metrics",
            lambda v: set(v) <= set(GENERATION_METRICS),
            f"every metric must be one of {', '.join(GENERATION_METRICS)}",
        ),
        *(
            (key, lambda v: len(v) in (0, 1, n), f"must hold 0, 1 or num_clients={n} values")
            for key in ("codec.activations", "codec.gradients", "codec.adapters")
        ),
        *(
            (
                key,
                lambda v: all(cut_format_ok(f) for f in v),
                f"every value must be one of {', '.join(CUT_FORMATS)} (0 < fraction <= 1)",
            )
            for key in ("codec.activations", "codec.gradients")
        ),
        *adaptive_rules(),
        (
            "codec.adapters",
            lambda v: all(f in ADAPTER_FORMATS for f in v),
            f"every value must be one of {', '.join(ADAPTER_FORMATS)}",
        ),
        (
            "compute_dtype",
            lambda v: v != "fp16" or cfg.device != "cpu",
            "'fp16' needs a CUDA device (device = 'cpu'); on a CPU use 'bf16' or 'fp32'",
        ),
        *method_rules(cfg),
        *((key, math.isfinite, "must be a finite number") for key, tp in field_types.items() if tp is float),
    ]


def split_rules(cfg: Config) -> list[tuple[str, Callable[[Any], bool], str]]:
    """The U shape's tail: one value for all or one per client, each a block or more, only with
    split.shape = 'u' (its depth against the model is checked when the model's size is known)."""
    n = cfg.federation.num_clients
    return [
        ("split.tail", lambda v: all(t >= 1 for t in v), "every tail must be >= 1 block"),
        ("split.tail", lambda v: len(v) in (0, 1, n), f"must hold 0, 1 or num_clients={n} values"),
        (
            "split.tail",
            lambda v: not v or cfg.split.shape == "u",
            "is for split.shape = 'u' (set it, or drop the tail)",
        ),
    ]


def adaptive_rules() -> list[tuple[str, Callable[[Any], bool], str]]:
    """Checks of the adaptive planning's values (docs/architecture.md, D11-D14)."""
    return [
        ("policy.smoothing", lambda v: 0 < v <= 1, "must be in (0, 1]"),
        (
            "policy.wire_formats",
            lambda v: all(cut_format_ok(f) for f in v),
            f"every value must be one of {', '.join(CUT_FORMATS)} (0 < fraction <= 1)",
        ),
        (
            "devices.conditions",
            lambda v: v in CONDITIONS or v.endswith(".csv"),
            f"must be one of {', '.join(CONDITIONS)} or the path of a trace .csv file",
        ),
    ]


def method_rules(cfg: Config) -> list[tuple[str, Callable[[Any], bool], str]]:
    """The rules the configured method adds (e.g. sfl-fixed: one cut for all), once its name is known."""
    if cfg.method not in METHODS.names():
        return []  # reported by the choice rule above
    method = METHODS.get(cfg.method)
    if method.splits:
        return method.config_rules(cfg)
    no_cut = f"must be empty or fp32 with method = '{cfg.method}' (activations and gradients cross at a split's cut)"
    codec_rules: list[tuple[str, Callable[[Any], bool], str]] = [
        (key, lambda v: set(v) <= {"fp32"}, no_cut) for key in ("codec.activations", "codec.gradients")
    ]
    if "adapters" not in method.sends:  # fedlora's whole traffic is the adapter exchange
        exchanges_none = f"must be empty or fp32 with method = '{cfg.method}', which exchanges no adapters"
        codec_rules.append(("codec.adapters", lambda v: set(v) <= {"fp32"}, exchanges_none))
    no_split = f"must be 'vanilla' with method = '{cfg.method}', which does not split the model"
    static = f"must be 'static' with method = '{cfg.method}' (changing conditions apply to the split methods)"
    return [
        *method.config_rules(cfg),
        *codec_rules,
        ("split.shape", lambda v: v == "vanilla", no_split),
        ("devices.conditions", lambda v: v == "static", static),
    ]
