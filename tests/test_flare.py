"""SplitFT on NVIDIA FLARE (SimEnv): same metrics and bytes as in-process, drop-outs, resume.

Each FLARE job starts a server and one process per site (20-35 s for 2 sites); the module
runs two SimEnv jobs, and a PocEnv one (about 70 s) with SPLITFT_TEST_POC=1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from splitft.cli import main
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.runtime import CallFailure, InProcessRuntime
from splitft.runtime.flare_job import project_yml

pytest.importorskip("nvflare")

BYTE_FIELDS = ("bytes_up", "bytes_down", "bytes_by_kind")
EXACT_FIELDS = ("round", "cuts", "clients", "policy", "virtual_s", "round_virtual_s", *BYTE_FIELDS)
CLOSE_FIELDS = ("train_loss", "val_loss", "test_ppl", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"line {i} " + "thou art fair " * (1 + i % 7) for i in range(60)) + "\n")
    return path


def args(corpus, rounds, *extra):
    return [
        "--model.name", "tiny:llama", "--data.train", str(corpus), "--federation.num_clients", "2",
        "--federation.rounds", str(rounds), "--eval.every", "1", "--eval.max_samples", "8", "--policy.name", "splitft",
        "--devices.preset", "hetero", "--train.lr", "0.01", "--lora.r_cut", "4", "--threads", "1", *extra,
    ]  # fmt: skip


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one, two):
    """Equal cuts, clients, virtual time and bytes; losses and scores within 1e-5."""
    first, second = metrics(one), metrics(two)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for key in EXACT_FIELDS:
            assert a[key] == b[key], (a["round"], key)
        for key in CLOSE_FIELDS:
            assert (a[key] is None) == (b[key] is None), key
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), (a["round"], key)
        assert [(d["client"], d["round"], d["method"]) for d in a["dropped"]] == [
            (d["client"], d["round"], d["method"]) for d in b["dropped"]
        ]
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for key in (*BYTE_FIELDS, "virtual_s", "dropped_clients", "rounds"):
        assert s1[key] == s2[key], key


@pytest.fixture(scope="module")
def inprocess(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "inprocess"
    assert main(["train", *args(corpus, 2), "--out", str(out)]) == 0
    return out


def site_configs(tmp_path, *texts):
    paths = []
    for i, text in enumerate(texts, start=1):
        paths.append(tmp_path / f"site-{i}.toml")
        paths[-1].write_text(text)
    return ["--flare.site_configs", ",".join(map(str, paths))]


def test_simenv_equals_inprocess(corpus, inprocess, tmp_path):
    flare = tmp_path / "flare"
    # Each site declares its device tier (the ones the 'hetero' preset gives, so times match).
    sites = site_configs(tmp_path, 'device = "phone-low"\n', 'device = "phone-high"\n')
    assert main(["train", *args(corpus, 2), "--runtime", "flare-sim", *sites, "--out", str(flare)]) == 0
    assert_same_run(inprocess, flare)
    for name in ("config.toml", "summary.json", "adapter", "adapter-best", "checkpoint"):
        assert (flare / name).exists(), name
    assert Config.from_toml(flare / "config.toml").devices.clients == ["phone-low", "phone-high"]
    # The checkpoint's client state came from the sites as codec bytes: same tensors.
    a, b = (load_file(str(d / "checkpoint" / "tensors.safetensors")) for d in (inprocess, flare))
    assert a.keys() == b.keys() and any(k.startswith("loop/clients/states/1/optimizer/exp_avg/") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


COMPRESSED = ("--codec.activations", "int4,topk:0.3", "--codec.gradients", "topk:0.1,int8")
COMPRESSED += ("--codec.adapters", "delta-int8")


def test_simenv_equals_inprocess_with_compression(corpus, inprocess, tmp_path):
    """Packed activations and gradients, error feedback on the server and the sites, delta
    adapters with references on both sides: the same run wherever the clients are."""
    one, two = tmp_path / "inprocess", tmp_path / "flare"
    assert main(["train", *args(corpus, 2, *COMPRESSED), "--out", str(one)]) == 0
    assert main(["train", *args(corpus, 2, *COMPRESSED), "--runtime", "flare-sim", "--out", str(two)]) == 0
    assert_same_run(one, two)
    compressed, fp32 = metrics(one)[-1]["bytes_by_kind"], metrics(inprocess)[-1]["bytes_by_kind"]
    assert (
        compressed["activations"] * 3 < fp32["activations"]
        and compressed["gradients"] * 3 < fp32["gradients"]
    )


def test_simenv_equals_inprocess_with_a_u_shape(corpus, tmp_path):
    """A U-shaped split (the sites run their tails, heads and losses: tail_step and
    heldout_score travel over FLARE) with lossy cut tensors both ways and the sites' error
    feedback on the gradient they send up: the same run, byte for byte, wherever the clients are."""
    u_shape = (
        "--split.shape",
        "u",
        "--split.tail",
        "1",
        "--codec.activations",
        "int8",
        "--codec.gradients",
        "int4",
    )
    one, two = tmp_path / "inprocess", tmp_path / "flare"
    assert main(["train", *args(corpus, 2, *u_shape), "--out", str(one)]) == 0
    assert main(["train", *args(corpus, 2, *u_shape), "--runtime", "flare-sim", "--out", str(two)]) == 0
    assert_same_run(one, two)
    assert all(row["bytes_by_kind"]["labels"] == 0 for row in metrics(one))


@pytest.mark.skipif(
    os.environ.get("SPLITFT_TEST_POC") != "1",
    reason="PocEnv takes about 70 s (provisioning, starting services); set SPLITFT_TEST_POC=1",
)
def test_pocenv_equals_inprocess(corpus, inprocess, tmp_path):
    poc = tmp_path / "poc"
    workspace = ["--flare.workspace", str(tmp_path / "ws")]
    assert main(["train", *args(corpus, 2), "--runtime", "flare-poc", *workspace, "--out", str(poc)]) == 0
    assert_same_run(inprocess, poc)


class FailingRuntime(InProcessRuntime):
    """In-process runtime where one client's ``nth`` call of ``method`` fails."""

    def __init__(self, roles, client: int, method: str, nth: int) -> None:
        super().__init__(roles)
        self.client, self.method, self.nth, self.count = f"client-{client}", method, nth, 0

    def call(self, target, method, payload):
        if (target, method) == (self.client, self.method):
            self.count += 1
            if self.count == self.nth:
                return CallFailure(target, method, "injected")
        return super().call(target, method, payload)


def test_resume_on_simenv_with_a_failing_site(corpus, tmp_path, monkeypatch):
    """1 round in-process, then resume on SimEnv (client state restored through the sites)
    where site-2 raises in its first forward step: the job finishes with the survivor, and the
    run equals 2 rounds in-process with the same failure."""
    from _flare_faults import FailingSite
    from splitft.runtime import flare_job

    run = tmp_path / "halves"
    assert main(["train", *args(corpus, 1), "--out", str(run)]) == 0
    recipe_cls, server_cls, _ = flare_job._nvflare()
    faulty = functools.partial(FailingSite, fail_on="site-2:forward_step:1")
    monkeypatch.setattr(flare_job, "_nvflare", lambda: (recipe_cls, server_cls, faulty))
    resumed = ["--federation.rounds", "2", "--runtime", "flare-sim", "--call_timeout_s", "120"]
    assert main(["train", "--resume", str(run), *resumed]) == 0
    rows = metrics(run)
    assert rows[0]["clients"] == [0, 1] and rows[0]["dropped"] == []
    assert rows[1]["clients"] == [0]
    (drop,) = rows[1]["dropped"]
    assert (drop["client"], drop["round"], drop["method"]) == (1, 2, "forward_step")
    assert "injected failure" in drop["error"]
    assert json.loads((run / "summary.json").read_text())["dropped_clients"] == [1]

    # The same drop in-process gives the same run: the round went on with the survivor and
    # the merge weighted its change alone (weights renormalised over who uploaded).
    from splitft.recipes import train as recipe
    from splitft.recipes.experiment import local_runtime, setup
    from splitft.report.rundir import RunDirectory

    cfg = Config.from_toml(run / "config.toml").with_overrides({"runtime": "inprocess"})
    exp = setup(cfg)
    runtime = FailingRuntime(local_runtime(exp).roles, 1, "forward_step", 2)
    local = RunDirectory.create(tmp_path / "inprocess")
    recipe.fit(exp, exp.method.make_loop(exp, runtime), local, progress_bar=False)
    assert_same_run(local.path, run)


class Proxy:
    """A stand-in for a FLARE client proxy: ``proxy(timeout=...).handle(method, payload)``."""

    def __init__(self, answer):
        self.answer, self.timeouts = answer, []

    def __call__(self, timeout):
        self.timeouts.append(timeout)
        return self

    def handle(self, method, payload):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_flare_runtime_turns_every_error_into_a_failed_call():
    from splitft.runtime.flare import FlareRuntime

    ok, boom, odd = Proxy(b"bytes"), Proxy(TimeoutError("timed out after 5 s")), Proxy({"not": "bytes"})
    runtime = FlareRuntime({"site-1": ok, "site-2": boom, "site-3": odd}, timeout_s=5)
    assert runtime.call("client-0", "end_round", b"") == b"bytes" and ok.timeouts == [5]
    failed = runtime.call("client-1", "forward_step", b"")
    assert isinstance(failed, CallFailure) and "timed out" in failed.error
    assert isinstance(runtime.call("client-2", "end_round", b""), CallFailure)
    assert "no FLARE site site-5" in runtime.call("client-4", "end_round", b"").error
    assert FlareRuntime({}, timeout_s=0).timeout_s > 1e6  # 0 = no limit


def test_site_errors_come_back_as_exceptions_not_exits(tmp_path):
    from _flare_faults import FailingSite
    from splitft.runtime.flare import read_site_config, site_index

    class Exits:
        def forward_step(self, payload):
            raise SystemExit(3)

    site = FailingSite({}, fail_on="site-1:end_round:2")
    site.name, site.error, site.client = "site-1", "", Exits()
    site.site = {"data_path": "", "device": ""}
    site._lock, site.calls = threading.Lock(), Counter()
    with pytest.raises(RuntimeError, match="tried to exit"):
        site.handle("forward_step", b"")
    with pytest.raises(RuntimeError, match="unknown method"):
        site.handle("__init__", b"")
    site.client.end_round = lambda payload: b"up"
    assert site.handle("end_round", b"") == b"up"
    with pytest.raises(RuntimeError, match="injected failure at end_round call 2"):
        site.handle("end_round", b"")
    site.error = "site site-1 could not start: DataError: missing"
    with pytest.raises(RuntimeError, match="could not start"):
        site.handle("begin_round", b"")
    assert site_index("site-3") == 2
    with pytest.raises(Exception, match="site-1 .. site-N"):
        site_index("hospital-a")
    # Fault injection is a test's job, not a production site's: a site config cannot ask for it.
    config = tmp_path / "site.toml"
    config.write_text('fail_on = "end_round:1"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['fail_on'\]; allowed: data_path, device"):
        read_site_config(config)


def test_without_the_extra_the_error_says_what_to_install(monkeypatch, tmp_path):
    from splitft.errors import ConfigError
    from splitft.runtime.flare_job import run_job

    monkeypatch.setitem(sys.modules, "nvflare.collab", None)  # as if not installed
    cfg = Config().with_overrides({"runtime": "flare-sim", "model.name": "tiny:llama"})
    with pytest.raises(ConfigError, match=r"pip install 'splitft\[flare\]'"):
        run_job(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_project_yml_names_the_server_and_sites():
    text = project_yml("fl.example.com", 3)
    assert "name: fl.example.com\n    type: server" in text
    assert all(f"name: site-{i}\n    type: client" in text for i in (1, 2, 3))


def test_a_site_with_its_own_file_trains_on_all_of_it(tmp_path):
    """A site's data_path is its client's whole training set: not split N ways first (a file
    with fewer samples than the federation has clients would fail that split)."""
    from splitft.runtime.flare import build_site_client

    local = tmp_path / "site.txt"
    local.write_text("".join(f"site line {i} " + "thou art fair " * (1 + i) + "\n" for i in range(3)))
    cfg = Config().with_overrides(
        {"model.name": "tiny:llama", "data.train": str(local), "federation.num_clients": 5}
    )
    client = build_site_client(cfg, 3, str(local))
    assert client.client_id == 3
    assert len(client.data) + len(client.heldout) == 3  # all 3 lines, nothing left to others
    lengths = [len(d[i]["input_ids"]) for d in (client.data, client.heldout) for i in range(len(d))]
    assert len(set(lengths)) == 3  # the three lines (of different lengths), not a repeat
    with pytest.raises(ConfigError, match="does not exist on this site"):
        build_site_client(cfg, 0, str(tmp_path / "missing.txt"))
