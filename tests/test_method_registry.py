"""A method is one object found through one registry: a toy fifth method, registered in this
test alone, runs through the real CLI end to end with nothing else changed."""

from __future__ import annotations

import json

import pytest

from splitft.algorithms.policy import Decision
from splitft.cli import main
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.methods.base import Method, RoundResult
from splitft.model.lora import full_ranks
from splitft.registry import METHODS
from splitft.roles.fed_server import FedServer
from splitft.roles.trainer import WholeModelTrainer
from splitft.sim.clock import RoundTiming, VirtualClock
from splitft.wire.calls import client_role, counted_call
from splitft.wire.codec import encode_message
from splitft.wire.messages import adapter_entries, control, read


class SoloLoop:
    """Client 0 trains the whole model on its own data and never shares it: the global set is
    simply its adapters (a 'no federation' baseline)."""

    def __init__(self, exp, runtime):
        self.exp, self.runtime = exp, runtime
        self.fed_server = FedServer(exp.layout, dict(exp.initial), exp.cfg.aggregation)
        self.clock = VirtualClock()
        self.dropped: set[int] = set()

    @property
    def global_adapters(self):
        return self.fed_server.global_adapters

    def run_round(self, round_number):
        n, drops = self.exp.cfg.federation.num_clients, []
        adapters = encode_message(adapter_entries(self.global_adapters, full_ranks(self.exp.layout))).data
        counted_call(
            self.runtime, self.exp.ledger, self.dropped, drops, round_number, 0, "begin_round", adapters
        )
        request = control(steps=1, first_step=round_number - 1)
        reply = counted_call(
            self.runtime, self.exp.ledger, self.dropped, drops, round_number, 0, "train", request
        )
        stats = read(reply)["control"]
        upload = self.runtime.call(client_role(0), "end_round", control())
        self.fed_server.assign(self.fed_server.contribution(upload, full_ranks(self.exp.layout)).tensors)
        timing = RoundTiming(1.0, {0: 1.0}, 0.0, 0.0)
        self.clock.advance(timing)
        return RoundResult(
            round=round_number,
            cuts=[0] * n,
            clients=[0],
            train_loss=stats["loss_sum"] / stats["tokens"],
            train_tokens=stats["tokens"],
            decisions=[Decision(0, "solo")] * n,
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            samples=sum(b for b, _ in stats["shapes"]),
        )

    def state_dict(self):
        return {"fed_server": self.fed_server.state_dict(), "clock": self.clock.to_dict()}

    def load_state_dict(self, state):
        self.fed_server.load_state_dict(state["fed_server"])
        self.clock = VirtualClock.from_dict(state["clock"])


class Solo(Method):
    name = "solo"
    splits = False
    sends = ("adapters", "control")

    def config_rules(self, cfg):
        return [("federation.num_clients", lambda v: v >= 1, "must be >= 1 for solo")]

    def build_client(self, cfg, index, train, heldout, shared):
        steps = cfg.federation.rounds
        return WholeModelTrainer(index, shared.model, shared.layout, train, cfg, shared.pad_id, steps)

    def make_loop(self, exp, runtime):
        return SoloLoop(exp, runtime)

    def trainable_params(self, exp, cuts):
        everything = sum(exp.layout.num_params(n, exp.layout.rank) for n in exp.layout.shapes)
        return [everything] + [0] * (len(cuts) - 1), [0] * len(cuts)


@pytest.fixture()
def solo():
    METHODS.register("solo", Solo())
    yield
    METHODS.unregister("solo")


def test_a_registered_method_runs_through_the_cli_end_to_end(solo, tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(f"speech {i} " + "my good lord " * (1 + i % 7) for i in range(60)) + "\n")
    out = tmp_path / "run"
    argv = [
        "train", "--method", "solo", "--model.name", "tiny:llama", "--model.keep_layers", "2",
        "--data.train", str(corpus), "--federation.num_clients", "2", "--federation.rounds", "2",
        "--eval.every", "1", "--eval.max_samples", "8", "--train.lr", "0.01", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["method"] == "solo" and summary["rounds"] == 2
    assert [r["policy"] for r in rows] == [["solo", "solo"]] * 2
    assert summary["final_test_ppl"] < summary["initial_test_ppl"]  # client 0 really trained
    assert summary["bytes_by_kind"]["adapters"] > 0  # the global set went down each round
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    # and it resumes like any method: its loop's state_dict is all the checkpoint holds
    assert main(["train", "--resume", str(out), "--federation.rounds", "3"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_an_unregistered_method_is_a_config_error_naming_the_allowed(tmp_path):
    with pytest.raises(
        ConfigError, match="method = 'solo': must be one of splitft, sfl-fixed, fedlora, centralized"
    ):
        Config().with_overrides({"method": "solo"}).validate()


def test_a_method_adds_its_own_config_rules(solo):
    Config().with_overrides({"method": "solo"}).validate()
    with pytest.raises(
        ConfigError, match="policy.name = 'resource': must be 'fixed' with method = 'sfl-fixed'"
    ):
        Config().with_overrides(
            {"method": "sfl-fixed", "policy.name": "resource", "split.cuts": "2"}
        ).validate()
