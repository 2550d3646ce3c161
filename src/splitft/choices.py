"""The allowed values of every choice field of the config, defined here once.

The modules that act on a value import its tuple from here (``sim/devices.py`` the device
tiers, ``report/text_metrics.py`` the generation metrics, ...); ``config_rules.py`` checks
config values against them. The wire formats are in ``config_codec.py``; the names of methods,
policies and runtimes are their registries' (``registry.py``).
"""

from __future__ import annotations

SCHEDULES = ("constant", "linear", "cosine")
AGGREGATIONS = ("fedavg", "svd")
DEVICES = ("auto", "cpu", "cuda")
PARTITIONS = ("iid", "length-dirichlet")
DEVICE_PRESETS = ("homogeneous", "hetero")
CLOCK_ORDERS = ("parallel", "sequential")
CUT_RANK_SIDES = ("none", "client", "both")
SERVER_ADAPTERS = ("per-client", "shared")
"""How the main server holds the server-side adapters (split.server_adapters)."""
SPLIT_SHAPES = ("vanilla", "u")
"""Where the model's last blocks, head and loss run (split.shape): the main server, or the client."""
DEVICE_TIERS = ("phone-low", "phone-high", "tablet", "laptop", "workstation")
"""Client device tiers (devices.clients), slowest first: the order 'hetero' cycles over."""
GENERATION_METRICS = ("bleu", "chrf", "nist", "rouge_l", "exact_match")
"""Scores of generated text (eval.generation_metrics; report/text_metrics.py says what each is)."""
SERVER_LOADS = ("idle", "busy")
"""Named main-server speeds (devices.server; a FLOP/s number is allowed too)."""
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")
"""Precisions the frozen base model can be held and run in (fp16 on CUDA only)."""
POLICY_SIGNALS = ("train", "heldout")
"""What the accuracy policies steer with (policy.signal): the free training-batch accuracy the
main server measures anyway, or a held-out check every policy.heldout_every rounds."""
PREDICT_FROM = ("observed", "profile")
"""What the policies' round-time predictor uses (policy.predict_from): rates observed in earlier
rounds (the profile seeds them), or the configured profiles alone."""
CONDITIONS = ("static", "changing")
"""Named device conditions (devices.conditions; a path to a trace .csv is allowed too)."""
