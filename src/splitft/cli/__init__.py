"""The ``splitft`` command: one entry point, one subcommand per job.

    splitft train [--config F] [--out DIR] [--section.field VALUE ...]
    splitft eval --adapter DIR [--data SPEC] [--split test|validation] [--metrics bleu,rouge_l]
    splitft generate --adapter DIR --out FILE.jsonl [--prompts FILE | --data SPEC] [--sample ...]
    splitft bench [--quick]
    splitft partition [--data SPEC] [--clients N] [--alpha A] [--bins B] [--out DIR] ...
    splitft report RUN_DIR [RUN_DIR ...] [--out DIR] [--target-ppl X] [--labels a,b,...] [--allow-incomplete]
    splitft compare (--vary FIELD=V1,V2 ... | --preset FILE) --out DIR [--reuse DIR] [--section.field VALUE ...]

Any :class:`~splitft.errors.SplitFTError` (bad config value, missing data, unknown model)
is printed as one ``error:`` line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from splitft.config import FIELD_TYPES, Config
from splitft.config_cli import add_config_arguments, config_from_args
from splitft.errors import ConfigError, SplitFTError

TOP_LEVEL = {key for key in FIELD_TYPES if "." not in key}

Command = Callable[[argparse.Namespace], int]


def _train(ns: argparse.Namespace) -> int:
    from splitft.launch import resume, train

    if ns.resume:
        if ns.config or ns.out:
            raise ConfigError("--resume takes the run's own config and folder; drop --config and --out")
        overrides = {k: v for k, v in vars(ns).items() if "." in k or k in TOP_LEVEL}
        result = resume(ns.resume, overrides, progress=True)
    else:
        cfg = config_from_args(ns, ns.config)
        out = ns.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
        result = train(cfg, out, progress=True)
    s = result.summary
    if "note" in s:  # flare-prod: the run directory is on the FLARE server host
        print(f"done: {s['note']} -> {result.run_dir}")
        return 0
    print(
        f"done: {s['rounds']} rounds, final test ppl {s['final_test_ppl']:.3f}, "
        f"acc {s['final_test_acc']:.4f}, {(s['bytes_up'] + s['bytes_down']) / 1e6:.2f} MB, "
        f"{s['wall_s']:.0f} s -> {result.run_dir}"
    )
    return 0


def _eval(ns: argparse.Namespace) -> int:
    from splitft.recipes.evaluate import evaluate_adapter
    from splitft.recipes.generate import check_metrics, generate_from_adapter

    metrics = check_metrics(_names(ns.metrics))
    result = evaluate_adapter(ns.adapter, ns.data, ns.split, ns.max_samples, ns.max_length, ns.batch_size)
    if metrics:  # generation metrics on the run's seeded test-prompt subset; texts are not kept
        with tempfile.TemporaryDirectory() as tmp:
            generated = generate_from_adapter(
                ns.adapter, Path(tmp) / "g.jsonl", None, ns.data, ns.generation_samples, ns.max_new_tokens,
                ns.batch_size, metrics=metrics,
            )  # fmt: skip
        result["generation"] = {k: v for k, v in generated.items() if k != "out"}
    print(json.dumps(result, indent=2))
    return 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _generate(ns: argparse.Namespace) -> int:
    from splitft.recipes.generate import generate_from_adapter

    result = generate_from_adapter(
        ns.adapter, ns.out, ns.prompts or None, ns.data, ns.max_samples, ns.max_new_tokens, ns.batch_size,
        ns.sample, ns.temperature, ns.top_p, ns.seed, _names(ns.metrics),
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def _bench(ns: argparse.Namespace) -> int:
    from splitft.cli.bench import main as bench_main

    return bench_main(ns)


def _partition(ns: argparse.Namespace) -> int:
    from splitft.report.partition import load_report_tokenizer, partition_report, write_report

    # The options are the run's config fields: the same parsing, checks and error messages.
    cfg = Config().with_overrides(
        {
            "data.train": ns.data,
            "data.partition": ns.partition,
            "data.alpha": ns.alpha,
            "data.bins": ns.bins,
            "data.partition_by": ns.partition_by,
            "data.max_length": ns.max_length,
            "federation.num_clients": ns.clients,
            "seed": ns.seed,
        }
    )
    cfg.validate()
    tokenizer = load_report_tokenizer(ns.tokenizer)
    report = partition_report(cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed, ns.tokenizer)
    print(report.table())
    if ns.out:
        for path in write_report(report, ns.out):
            print(f"wrote {path}")
    return 0


def _compare(ns: argparse.Namespace) -> int:
    from splitft.cli.compare import compare, load_preset, plan_from_vary
    from splitft.report.compare import format_table

    if ns.preset and ns.config:
        raise ConfigError("give --preset or --config, not both (a preset is a config with a [compare] table)")
    if ns.preset:
        _, plan = load_preset(ns.preset)
        if ns.vary:
            plan.runs = plan_from_vary(ns.vary).runs
    elif ns.vary:
        plan = plan_from_vary(ns.vary)
    else:
        raise ConfigError("splitft compare needs --vary FIELD=V1,V2 or --preset FILE")
    base = config_from_args(ns, ns.preset or ns.config)
    if plan.description:
        print(plan.description)
    rows = compare(base, plan, ns.out, ns.target_ppl, ns.reuse)
    print(format_table(rows))
    print(f"wrote {ns.out}/comparison.md, comparison.csv and plots")
    return 0


def _report(ns: argparse.Namespace) -> int:
    from splitft.report.compare import compare_runs, format_table

    labels = [label.strip() for label in ns.labels.split(",")] if ns.labels else None
    out = Path(ns.out) if ns.out else None
    try:
        target = float(ns.target_ppl) if ns.target_ppl else None
    except ValueError:
        raise ConfigError(f"--target-ppl must be a number, got {ns.target_ppl!r}") from None
    rows = compare_runs([Path(d) for d in ns.run_dirs], out, target, labels, ns.allow_incomplete)
    print(format_table(rows), end="")
    if out is not None:
        print(f"wrote {out}/comparison.md, comparison.csv and 4 plots")
    return 0


def _reject_unknown(ns: argparse.Namespace, unknown: list[str]) -> None:
    """An unknown ``--section.field`` of `train` gets the config's error, with a suggestion."""
    if ns.command in ("train", "compare") and unknown[0].startswith("--"):
        key, _, value = unknown[0][2:].partition("=")
        Config().with_overrides({key: value or (unknown[1] if len(unknown) > 1 else "")})


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line like every other (not usage + error)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="fine-tune across clients with split LoRA and write a run directory",
        usage="splitft train [--config FILE] [--out DIR | --resume RUN_DIR] [--section.field VALUE ...]",
    )
    train.add_argument("--config", help="TOML config file (fields not given keep their defaults)")
    train.add_argument("--out", help="run directory to create (default: runs/train-<time>)")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last complete round (e.g. with a larger --federation.rounds)",
    )
    add_config_arguments(train)
    train.set_defaults(run=_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
    ev.add_argument(
        "--metrics",
        default="",
        help="also generate and score, e.g. bleu,rouge_l (see eval.generation_metrics)",
    )
    ev.add_argument(
        "--generation-samples", type=int, default=32, help="test prompts to generate from (seeded)"
    )
    ev.add_argument("--max-new-tokens", type=int, default=64, help="most tokens generated per prompt")
    ev.set_defaults(run=_eval)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate",
        help="generate text with a saved adapter from a prompt file or a corpus's test prompts (JSONL out)",
        usage="splitft generate --adapter DIR --out FILE.jsonl [--prompts FILE | --data SPEC] [options]",
    )
    gen.add_argument("--adapter", required=True, help="adapter folder written by `splitft train`")
    gen.add_argument("--out", required=True, help="JSONL file to write: prompt, output, references per line")
    gen.add_argument(
        "--prompts", default="", help=".txt (one prompt per line) or .jsonl (prompt, references)"
    )
    gen.add_argument("--data", default="", help="prompts from this corpus's test split (default: the run's)")
    gen.add_argument(
        "--max-samples", type=int, default=32, help="at most N prompts (a seeded subset of a corpus)"
    )
    gen.add_argument("--max-new-tokens", type=int, default=64, help="most tokens generated per prompt")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    gen.add_argument("--seed", type=int, default=0, help="seed of the prompt subset and of sampling")
    gen.add_argument(
        "--metrics", default="", help="score against the references, e.g. bleu,rouge_l,exact_match"
    )
    gen.set_defaults(run=_generate)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser(
        "compare",
        help="train several methods or values of a field on the same data and seed, and compare them",
        usage="splitft compare (--vary FIELD=V1,V2[,...] ... | --preset FILE) --out DIR [--config FILE] "
        "[--section.field VALUE ...]",
    )
    cmp.add_argument(
        "--vary",
        action="append",
        help="a field and its values, e.g. method=fedlora,splitft; repeat for a grid (every combination)",
    )
    cmp.add_argument(
        "--preset", help="a preset file (configs/): base config plus the runs of its [compare] table"
    )
    cmp.add_argument(
        "--reuse",
        metavar="DIR",
        help="copy a run whose exact config already finished under DIR instead of training it again",
    )
    cmp.add_argument("--out", required=True, help="folder for one run per value and the comparison")
    cmp.add_argument("--config", help="TOML config the runs share")
    cmp.add_argument(
        "--target-ppl", type=float, default=None, help="perplexity for the time-to-target column"
    )
    add_config_arguments(cmp)
    cmp.set_defaults(run=_compare)


def _add_bench(sub: argparse._SubParsersAction) -> None:
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


def _add_partition(sub: argparse._SubParsersAction) -> None:
    # Numbers are taken as text and parsed by the config, so a bad value is one `error:` line;
    # defaults come from the config, so this shows what `splitft train` would get.
    data = Config().data
    part = sub.add_parser(
        "partition",
        help="show how a partition spreads the training samples and their lengths over clients",
        description="Partition the training data as `splitft train` would (same options, same seed) "
        "and print per client: samples, tokens, mean and median length, the shares of the global "
        "length bins and their Jensen-Shannon divergence to the global shares.",
    )
    part.add_argument(
        "--data", default="shakespeare", help="corpus or file, as data.train (default: shakespeare)"
    )
    part.add_argument("--clients", default="5", metavar="N", help="number of clients (default: 5)")
    part.add_argument(
        "--partition", default="length-dirichlet", metavar="KIND", help="iid or length-dirichlet (default)"
    )
    part.add_argument(
        "--alpha",
        default=str(data.alpha),
        metavar="A",
        help=f"Dirichlet concentration; small = skewed (default: {data.alpha})",
    )
    part.add_argument(
        "--bins", default=str(data.bins), metavar="B", help=f"number of length bins (default: {data.bins})"
    )
    part.add_argument(
        "--partition-by",
        default="length",
        metavar="BY",
        help="'length' or a meta column such as genre or play (default: length; iid ignores it)",
    )
    part.add_argument("--seed", default="0", metavar="S", help="seed of the partition (default: 0)")
    part.add_argument(
        "--max-length",
        default=str(data.max_length),
        metavar="T",
        help=f"truncate samples at T tokens (default: {data.max_length})",
    )
    part.add_argument(
        "--tokenizer",
        default="smollm2-135m",
        help="tokenizer of the lengths (default: smollm2-135m); 'whitespace' counts words: fast on huge corpora",
    )
    part.add_argument(
        "--out", default="", metavar="DIR", help="also write partition.png and partition.json here"
    )
    part.set_defaults(run=_partition)


def _add_report(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser(
        "report",
        help="compare finished runs: a table of perplexity, time to a target, traffic and overlay plots",
    )
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of `splitft train`")
    rep.add_argument(
        "--out", default="", metavar="DIR", help="also write comparison.md/.csv and the plots here"
    )
    rep.add_argument(
        "--target-ppl",
        default="",
        metavar="X",
        help="target test perplexity (default: the largest final test ppl among the runs)",
    )
    rep.add_argument("--labels", default="", metavar="A,B,...", help="run labels (default: folder names)")
    rep.add_argument(
        "--allow-incomplete", action="store_true", help="report runs without summary.json from their metrics"
    )
    rep.set_defaults(run=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitft", description="Adaptive federated split LoRA fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_generate, _add_compare, _add_bench, _add_partition, _add_report):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns, unknown = parser.parse_known_args(argv)
        if unknown:
            _reject_unknown(ns, unknown)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return ns.run(ns)
    except SplitFTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write fault (permission, full disk): one line; what was written stays
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
