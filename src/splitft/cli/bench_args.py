"""The ``splitft bench`` subcommand's arguments, apart from ``bench.py`` so that building the CLI
parser imports no torch."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``bench`` subcommand's arguments."""
    bench = sub.add_parser(
        "bench",
        help="measure split vs unsplit vs plain PEFT steps in fp32 and bf16, bytes per step and memory per client",
    )
    bench.add_argument("--model", default="smollm2-135m", help="model to measure")
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--length", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of each timing")
    bench.add_argument("--loss-chunk", type=int, default=128, help="loss_chunk of the bf16 mode")
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where the steps run")
    bench.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[10, 100, 500],
        help="client counts of the bf16 memory probes",
    )
    bench.add_argument(
        "--no-memory", action="store_true", help="skip the memory probes (child processes, CPU)"
    )
    bench.add_argument("--quick", action="store_true", help="tiny model, few repeats: a smoke run")
    bench.add_argument("--out", default="", help="also write the results as JSON here")
    return bench
