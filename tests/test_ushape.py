"""A U-shaped split end to end (docs/architecture.md, D15): the labels stay on the client, the
traffic is two activation and two gradient transfers per step, every policy and both
server-adapter modes run, the exported adapter loads with stock PEFT, resume is exact, and bad
shapes are one-line errors before anything is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from splitft.cli import main
from splitft.config import Config
from splitft.data.prepare import prepare_data
from splitft.data.tokenize import collate, pad_id_of
from splitft.model.loading import load_model
from splitft.model.split import token_stats
from splitft.recipes.experiment import local_runtime
from splitft.recipes.train import train
from splitft.runtime.base import CallFailure
from splitft.runtime.inprocess import InProcessRuntime
from splitft.wire.codec import Entry, decode_message, encode_message

from _models import tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"line {i} " + "thou art fair and " * (1 + i % 7) for i in range(80)) + "\n")
    return path


def args(corpus, rounds, *extra):
    """Two clients on the 4-block tiny Llama, U shape with a one-block tail."""
    return [
        "--model.name", "tiny:llama", "--data.train", str(corpus), "--federation.num_clients", "2",
        "--federation.rounds", str(rounds), "--eval.every", "1", "--eval.max_samples", "8",
        "--train.lr", "0.01", "--lora.r_cut", "4", "--split.shape", "u", "--split.tail", "1",
        "--threads", "1", *extra,
    ]  # fmt: skip


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_s")
    return rows


def ledger_records(run_dir):
    """The byte ledger's records (round, client, direction, bytes by kind) from the checkpoint."""
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())["loop"]["ledger"]["records"]


@pytest.fixture(scope="module")
def u_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "u"
    assert (
        main(
            [
                "train",
                *args(corpus, 2, "--policy.name", "splitft", "--devices.preset", "hetero"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_a_u_step_sends_activations_and_gradients_both_ways_and_no_labels(u_run):
    rows = metrics(u_run)
    assert all(row["bytes_by_kind"]["labels"] == 0 for row in rows)
    for record in ledger_records(u_run):
        kinds = record["bytes_by_kind"]
        # up: the hidden state at the cut and the gradient at the tail's input; down: the
        # middle's output and the gradient at the cut (same shapes, fp32 both ways)
        assert kinds["activations"] > 0 and kinds["gradients"] > 0, record
    by = {(r["round"], r["client"], r["direction"]): r["bytes_by_kind"] for r in ledger_records(u_run)}
    for (rnd, client, direction), kinds in by.items():
        if direction == "up":
            down = by[(rnd, client, "down")]
            assert kinds["gradients"] == down["gradients"]
            # held-out checks send the same hidden states both ways too
            assert kinds["activations"] == down["activations"]


def test_u_shape_trains_and_the_exported_adapter_reproduces_the_test_loss(corpus, u_run):
    summary = json.loads((u_run / "summary.json").read_text())
    rows = metrics(u_run)
    assert rows[0]["canonicalized_blocks"] == [0, 1, 2, 3]  # every block is a boundary at cut 1, tail 1
    assert summary["trainable_params_client"] > 0 and summary["trainable_params_server"] > 0
    cfg = Config.from_toml(u_run / "config.toml")
    tok = tokenizer()
    data = prepare_data(cfg.data, tok, cfg.federation.num_clients, cfg.seed)
    model = PeftModel.from_pretrained(
        load_model("tiny:llama", vocab_size=len(tok), seed=cfg.seed), str(u_run / "adapter")
    )
    b = collate([data.test[i] for i in range(min(cfg.eval.max_samples, len(data.test)))], pad_id_of(tok))
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    nll, tokens, _ = token_stats(logits, b["labels"])
    assert abs(float(nll) / tokens - summary["final_test_loss"]) < 1e-5


class RecordingRuntime(InProcessRuntime):
    """Every payload a client sends to the server side (the loop and the main server are one host)."""

    def __init__(self, roles) -> None:
        super().__init__(roles)
        self.received: list[tuple[str, bytes]] = []

    def call(self, target, method, payload):
        reply = super().call(target, method, payload)
        if isinstance(reply, bytes):
            self.received.append((method, reply))
        return reply


def token_windows(exp, n=4):
    """Every run of ``n`` consecutive token ids in the clients' training and held-out data."""
    windows = set()
    for part in (*exp.data.clients, *exp.data.heldout):
        for ids in part.input_ids:
            windows.update(tuple(ids[j : j + n]) for j in range(len(ids) - n + 1))
    return windows


def leaks(value, windows, n=4) -> list[str]:
    """What in one decoded entry is an integer tensor or holds the client's tokens."""
    if isinstance(value, torch.Tensor):
        found = (
            []
            if value.is_floating_point() or value.dtype == torch.bool
            else [f"integer tensor {value.dtype}"]
        )
        if value.dim() and value.numel() >= n and bool((value.double() == value.double().round()).all()):
            rows = value.double().round().long().reshape(-1, value.shape[-1]).tolist()
            if any(tuple(r[j : j + n]) in windows for r in rows for j in range(len(r) - n + 1)):
                found.append("a tensor whose values are the client's token ids")
        return found
    if isinstance(value, dict):
        return [leak for v in value.values() for leak in leaks(v, windows, n)]
    if isinstance(value, list):
        ints = [v for v in value if isinstance(v, int)]
        if any(tuple(ints[j : j + n]) in windows for j in range(len(ints) - n + 1)):
            return ["a list of the client's token ids"]
        return [leak for v in value for leak in leaks(v, windows, n)]
    return []


@pytest.mark.parametrize("shape", ["u", "vanilla"])
def test_the_server_never_sees_token_ids_in_a_u_shape(shape, corpus, tmp_path):
    """Everything the server side receives during U-shaped rounds holds no integer tensor and
    nothing that decodes to the clients' tokens; the same detector finds them in a vanilla split."""
    recorded: list[RecordingRuntime] = []

    def connect(exp):
        recorded.append(RecordingRuntime(local_runtime(exp).roles))
        recorded[-1].exp = exp
        return recorded[-1]

    extra = ["--policy.name", "accuracy", "--policy.signal", "heldout"]  # held-out checks travel too
    cfg = Config().with_overrides(_overrides(args(corpus, 2, *extra)))
    if shape == "vanilla":
        cfg = cfg.with_overrides({"split.shape": "vanilla", "split.tail": ""})
    train(cfg, tmp_path / "run", connect=connect)
    runtime = recorded[0]
    windows = token_windows(runtime.exp)
    methods = {method for method, _ in runtime.received}
    assert {"forward_step", "end_round", "heldout_forward"} <= methods
    found = {
        (method, leak)
        for method, payload in runtime.received
        for leak in leaks(decode_message(payload), windows)
    }
    if shape == "u":
        assert {"tail_step", "heldout_score"} <= methods
        assert found == set()
    else:
        assert ("forward_step", "integer tensor torch.int32") in found
        assert ("forward_step", "a tensor whose values are the client's token ids") in found


def _overrides(argv):
    """``--key value`` pairs as config overrides."""
    return {key.removeprefix("--"): value for key, value in zip(argv[::2], argv[1::2], strict=True)}


@pytest.mark.parametrize(
    "extra",
    [
        ["--policy.name", "fixed", "--split.cuts", "1"],
        ["--policy.name", "accuracy", "--split.server_adapters", "shared"],
        ["--policy.name", "resource", "--devices.preset", "hetero", "--devices.server", "busy"],
        ["--policy.name", "splitft", "--devices.preset", "hetero", "--devices.conditions", "changing"]
        + ["--policy.wire_formats", "fp32,int8", "--devices.change_every_s", "0.5"],
        [
            "--method",
            "sfl-fixed",
            "--split.cuts",
            "1",
            "--codec.activations",
            "int8",
            "--codec.gradients",
            "topk:0.3",
        ],
    ],
    ids=["fixed", "accuracy-shared", "resource", "splitft-changing-wire", "sfl-fixed-compressed"],
)
def test_every_policy_mode_and_codec_runs_a_u_shape(extra, corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *args(corpus, 1, "--split.tail", "2", *extra), "--out", str(out)]) == 0
    row = metrics(out)[0]
    assert all(cut == 1 for cut in row["cuts"])  # 4 blocks, tail 2: the server holds block 1..2, so k = 1
    assert row["bytes_by_kind"]["labels"] == 0 and row["train_loss"] > 0


def test_two_plus_two_rounds_equal_four_with_the_clients_gradient_feedback(corpus, tmp_path):
    """Resume is exact, the clients' error feedback on the gradient they send up included."""
    extra = ("--policy.name", "splitft", "--codec.gradients", "int4", "--devices.preset", "hetero")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(["train", *args(corpus, 4, *extra), "--out", str(straight)]) == 0
    assert main(["train", *args(corpus, 2, *extra), "--out", str(halves)]) == 0
    state = load_file(str(halves / "checkpoint" / "tensors.safetensors"))
    assert any(k.startswith("loop/clients/states/0/gradient_feedback/") for k in state)
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    assert metrics(straight) == metrics(halves)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--split.cuts", "2", "--split.tail", "2"],
            "split.tail 2 with split.cuts 2 (client 0) leaves the main server no block",
        ),
        (
            ["--split.tail", "3"],
            "split.tail 3 (client 0) is beyond the model: the model has 4 blocks, so at most 2",
        ),
        (["--method", "fedlora"], "split.shape = 'u': must be 'vanilla' with method = 'fedlora'"),
        (["--split.shape", "vanilla"], "split.tail = [1]: is for split.shape = 'u'"),
        (["--split.shape", "U"], "split.shape = 'U': must be one of vanilla, u"),
        (["--split.tail", "0"], "split.tail = [0]: every tail must be >= 1 block"),
    ],
)
def test_bad_u_shapes_are_one_line_before_anything_is_written(extra, message, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *args(corpus, 1, *extra), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not out.exists()


def test_the_ushape_preset_and_its_report_run_on_a_tiny_model(corpus, tmp_path):
    """configs/cpu/ushape.toml, scaled to one round of the tiny Llama, through `compare`; the
    report reads both runs: no labels in the U shape, the tail's traffic both ways, the phone."""
    preset = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "ushape.toml"
    tiny = (
        preset.read_text()
        .replace('"smollm2-135m"', '"tiny:llama"')
        .replace('"wikitext-2"', f'"{corpus}"')
        .replace("rounds = 30", "rounds = 1")
        .replace("cuts = [2]", "cuts = [1]")
        .replace("every = 10", "every = 1")
    )
    (tmp_path / "tiny.toml").write_text(tiny)
    assert main(["compare", "--preset", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "cmp")]) == 0
    script = preset.parents[2] / "scripts" / "ushape_report.py"
    spec = importlib.util.spec_from_file_location("ushape_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in module.report(tmp_path / "cmp").splitlines()
    ]
    rows = {cells[0]: cells[1:] for cells in table}
    assert float(rows["MB labels up"][0]) > 0 and float(rows["MB labels up"][1]) == 0
    assert float(rows["MB activations down"][0]) == 0 < float(rows["MB activations down"][1])
    assert float(rows["MB gradients up"][0]) == 0 < float(rows["MB gradients up"][1])
    assert rows["phone-low: cut, tail"] == ["1, 0", "1, 2"]
    vanilla_mb, u_mb = map(float, rows["phone-low: training memory MB"])
    assert u_mb > vanilla_mb


class TailFaults(InProcessRuntime):
    """Client 1's first tail call fails; client 2's first tail reply sends a gradient of the wrong shape."""

    def __init__(self, roles) -> None:
        super().__init__(roles)
        self.seen: set[str] = set()

    def call(self, target, method, payload):
        reply = super().call(target, method, payload)
        if method != "tail_step" or target in self.seen:
            return reply
        self.seen.add(target)
        if target == "client-1":
            return CallFailure(target, method, "injected")
        if target == "client-2":
            return encode_message([Entry("grad", "gradients", torch.zeros(1, 2, 3))]).data
        return reply


def test_a_client_failing_in_its_tail_is_dropped_and_the_server_forgets_its_step(corpus, tmp_path):
    servers = []

    def connect(exp):
        servers.append(exp.server)
        return TailFaults(local_runtime(exp).roles)

    cfg = Config().with_overrides(_overrides(args(corpus, 2, "--federation.num_clients", "3")))
    train(cfg, tmp_path / "run", connect=connect)
    rows = metrics(tmp_path / "run")
    drops = {d["client"]: d for d in rows[0]["dropped"]}
    assert drops.keys() == {1, 2} and drops[1]["method"] == "tail_step" and "injected" in drops[1]["error"]
    assert drops[2]["method"] == "tail_step" and "malformed reply" in drops[2]["error"]
    assert rows[1]["clients"] == [0] and rows[1]["train_loss"] > 0
    assert servers[0]._pending == {}  # no graph of a failed step is kept
