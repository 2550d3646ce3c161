"""Per-call overhead and time per round: in-process vs FLARE SimEnv (vs PocEnv with --poc).

    PYTHONPATH=$PWD/src python scripts/bench_flare.py [--poc] [--rounds 4] [--calls 50] [--out F]

Same tiny model (tiny:llama), 2 clients, seed 0 on every runtime; writes one JSON object to
``--out`` (FLARE logs to stdout) and a line per runtime to stderr: the numbers in
docs/benchmarks.md, "Multi-machine runtimes". Absolute paths matter: FLARE's
processes run in their own folders, so PYTHONPATH must be absolute.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from splitft.config import Config
from splitft.recipes.train import train
from splitft.runtime import InProcessRuntime
from splitft.runtime.flare_job import probe_calls

SIZES = [1_000, 100_000, 4_000_000]


class Echo:
    def echo(self, payload: bytes) -> bytes:
        return payload


def inprocess_calls(sizes: list[int], count: int) -> dict[str, float]:
    runtime = InProcessRuntime({"client-0": Echo()})
    out = {}
    for size in sizes:
        payload = bytes(size)
        started = time.perf_counter()
        for _ in range(count):
            runtime.call("client-0", "echo", payload)
        out[str(size)] = (time.perf_counter() - started) / count
    return out


def run(cfg: Config, folder: Path) -> dict:
    started = time.perf_counter()
    result = train(cfg, folder / cfg.runtime)
    total = time.perf_counter() - started
    walls = [m["wall_s"] for m in result.metrics]
    return {
        "total_s": round(total, 2),  # job start-up included
        "round_s": round((walls[-1] - walls[0]) / (len(walls) - 1), 3),  # steady state: rounds 2..N
        "final_test_ppl": result.summary["final_test_ppl"],
        "bytes": result.summary["bytes_up"] + result.summary["bytes_down"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poc", action="store_true", help="also PocEnv (about a minute more)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=50, help="calls per payload size and site")
    parser.add_argument("--out", default="bench-flare.json", help="JSON file to write")
    ns = parser.parse_args(argv)
    runtimes = ["inprocess", "flare-sim"] + (["flare-poc"] if ns.poc else [])
    out: dict = {"sizes": SIZES, "calls_s": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="splitft-bench-") as tmp:
        folder = Path(tmp)
        corpus = folder / "lines.txt"
        corpus.write_text("\n".join(f"line {i} " + "thou art fair " * (1 + i % 7) for i in range(60)) + "\n")
        base = Config().with_overrides(
            {
                "model.name": "tiny:llama", "data.train": str(corpus), "federation.num_clients": 2,
                "federation.rounds": ns.rounds, "eval.every": 1, "eval.max_samples": 8,
                "policy.name": "splitft", "devices.preset": "hetero", "lora.r_cut": 4, "threads": 1,
            }
        )  # fmt: skip
        for name in runtimes:
            cfg = base.with_overrides({"runtime": name})
            out["runs"][name] = run(cfg, folder)
            if name == "inprocess":
                out["calls_s"][name] = inprocess_calls(SIZES, ns.calls)
            else:
                out["calls_s"][name] = probe_calls(cfg, SIZES, ns.calls)
            print(name, json.dumps(out["runs"][name]), json.dumps(out["calls_s"][name]), file=sys.stderr)
    Path(ns.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
