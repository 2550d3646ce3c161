"""The ``splitft`` command: one entry point, one subcommand per job.

    splitft train [--config F] [--out DIR] [--section.field VALUE ...]
    splitft eval --adapter DIR [--data SPEC] [--split test|validation]
    splitft bench [--quick]

Any :class:`~splitft.errors.SplitFTError` (bad config value, missing data, unknown model)
is printed as one ``error:`` line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from splitft.config import Config, add_config_arguments, config_from_args
from splitft.errors import SplitFTError

Command = Callable[[argparse.Namespace], int]


def _train(ns: argparse.Namespace) -> int:
    from splitft.train import train

    cfg = config_from_args(ns, ns.config)
    out = ns.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, progress=True)
    s = result.summary
    print(
        f"done: {s['rounds']} rounds, final test ppl {s['final_test_ppl']:.3f}, "
        f"acc {s['final_test_acc']:.4f}, {(s['bytes_up'] + s['bytes_down']) / 1e6:.2f} MB, "
        f"{s['wall_s']:.0f} s -> {result.run_dir}"
    )
    return 0


def _eval(ns: argparse.Namespace) -> int:
    from splitft.evaluation import evaluate_adapter

    result = evaluate_adapter(ns.adapter, ns.data, ns.split, ns.max_samples, ns.max_length, ns.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def _bench(ns: argparse.Namespace) -> int:
    from splitft.bench import main as bench_main

    return bench_main(ns)


def _reject_unknown(ns: argparse.Namespace, unknown: list[str]) -> None:
    """An unknown ``--section.field`` of `train` gets the config's error, with a suggestion."""
    if ns.command == "train" and unknown[0].startswith("--"):
        key, _, value = unknown[0][2:].partition("=")
        Config().with_overrides({key: value or (unknown[1] if len(unknown) > 1 else "")})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitft", description="Adaptive federated split LoRA fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="fine-tune across clients with split LoRA and write a run directory",
        usage="splitft train [--config FILE] [--out DIR] [--section.field VALUE ...]",
    )
    train.add_argument("--config", help="TOML config file (fields not given keep their defaults)")
    train.add_argument("--out", help="run directory to create (default: runs/train-<time>)")
    add_config_arguments(train)
    train.set_defaults(run=_train)

    ev = sub.add_parser("eval", help="score a saved adapter (PEFT format) on test or validation text")
    ev.add_argument("--adapter", required=True, help="adapter folder written by `splitft train`")
    ev.add_argument("--data", default="", help="corpus or file (default: the run's data.train)")
    ev.add_argument("--split", default="test", choices=("test", "validation"), help="which split to score")
    ev.add_argument(
        "--max-samples", type=int, default=0, help="score at most N samples (0 = the run's eval.max_samples)"
    )
    ev.add_argument(
        "--max-length", type=int, default=0, help="truncate at N tokens (0 = the run's data.max_length)"
    )
    ev.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    ev.set_defaults(run=_eval)

    bench = sub.add_parser(
        "bench", help="measure split vs unsplit step time, bytes per step and memory per client"
    )
    bench.add_argument("--model", default="smollm2-135m", help="model to measure")
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--length", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of each timing")
    bench.add_argument("--quick", action="store_true", help="tiny model, few repeats: a smoke run")
    bench.add_argument("--out", default="", help="also write the results as JSON here")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            _reject_unknown(ns, unknown)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return ns.run(ns)
    except SplitFTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
