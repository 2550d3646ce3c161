"""Generation and its metrics: known library values, seeded decoding, prompts with references,
clear errors, the end-of-training scores, and TensorBoard event files."""

from __future__ import annotations

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from splitft.cli import main
from splitft.config import Config
from splitft.data.samples import Sample
from splitft.errors import ConfigError, DataError
from splitft.recipes.generate import generate_texts, prompt_set, read_prompt_file, trim
from splitft.report.tensorboard import FOLDER
from splitft.report.text_metrics import final_number, score

from _models import tokenizer

HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [
    ("The dog bit the man.", "The dog had bit the man."),
    ("It was not unexpected.", "No one was surprised."),
    ("The man bit him first.", "The man had bitten the dog."),
]


def test_bleu_and_chrf_give_sacrebleus_documented_values() -> None:
    """sacreBLEU's README example (two reference streams): BLEU = 48.53, chrF2 = 59.73."""
    scores = score(["bleu", "chrf"], HYPS, REFS)
    assert scores["bleu"] == pytest.approx(48.53, abs=0.005)
    assert scores["chrf"] == pytest.approx(59.73, abs=0.005)


def test_rouge_l_and_nist_on_hand_made_references() -> None:
    # LCS of 'the quick brown dog jumps on the log' and 'the quick brown fox jumps over the lazy
    # dog' is 5 tokens: P = 5/8, R = 5/9, F1 = 50/85.
    one = score(
        ["rouge_l"],
        ["The quick brown dog jumps on the log."],
        [["The quick brown fox jumps over the lazy dog"]],
    )
    assert one["rouge_l"] == pytest.approx(100 * 50 / 85, abs=1e-3)
    best = score(["rouge_l"], ["a b c"], [["x y z", "a b c"]])  # the best reference counts
    assert best["rouge_l"] == pytest.approx(100.0)
    perfect, partial = (
        score(["nist"], [h], [[r]])["nist"]
        for h, r in (("a b c d e", "a b c d e"), ("a b x d e", "a b c d e"))
    )
    assert perfect > partial > 0


def test_exact_match_reads_the_final_number_of_gsm8k_answers() -> None:
    assert final_number("so 3 + 4 = 7 apples\n#### 1,234") == "1234"
    assert final_number("The answer is 42.") == "42"
    assert final_number("no number") is None
    hyps = ["It costs 1234 dollars.", "#### 7", "I do not know"]
    refs = [["... #### 1,234"], ["#### 8"], ["#### 3"]]
    assert score(["exact_match"], hyps, refs)["exact_match"] == pytest.approx(100 / 3, abs=1e-3)


def test_unknown_metric_and_mismatched_inputs_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown generation metric\(s\) \['meteor'\]; allowed: bleu"):
        score(["meteor"], ["a"], [["a"]])
    with pytest.raises(ValueError, match="2 generated texts for 1 reference lists"):
        score(["bleu"], ["a", "b"], [["a"]])
    with pytest.raises(
        ConfigError, match="eval.generation_metrics = \\['cider'\\]: every metric must be one of"
    ):
        Config().with_overrides({"eval.generation_metrics": "cider"}).validate()


def test_prompt_set_groups_references_and_draws_a_seeded_subset() -> None:
    samples = [Sample(f"P{i % 5}: R{i}", {"prompt_chars": 4}) for i in range(20)]
    everything = prompt_set(samples, 100, seed=0)
    assert [p.text for p in everything] == [f"P{i}: " for i in range(5)]
    assert everything[1].references == ("R1", "R6", "R11", "R16")
    some = prompt_set(samples, 3, seed=0)
    assert len(some) == 3 and some == prompt_set(samples, 3, seed=0)
    assert {tuple(p.text for p in prompt_set(samples, 3, seed=s)) for s in range(6)} != {
        tuple(p.text for p in some)
    }
    with pytest.raises(DataError, match="prompt/response test split"):
        prompt_set([Sample("plain text")], 3, seed=0)


def test_real_e2e_test_prompts_carry_every_reference(shared_data) -> None:
    from splitft.data.pairs import load_e2e

    prompts = prompt_set(load_e2e(shared_data / "e2e-nlg").test, 10, seed=0)
    assert len(prompts) == 10 and all(p.text.startswith("Meaning representation:") for p in prompts)
    assert max(len(p.references) for p in prompts) > 1  # E2E has several references per MR


def test_trim_cuts_one_line_references_at_the_first_line_break() -> None:
    prompts = prompt_set([Sample("Q: A", {"prompt_chars": 3}), Sample("M: x\ny", {"prompt_chars": 3})], 9, 0)
    assert trim([" one line\nand more", "first\nsecond"], prompts) == ["one line", "first\nsecond"]


def test_bad_prompt_files_name_the_file_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match="bad.jsonl line 2: expected an object with a string field 'prompt'"):
        read_prompt_file(bad)
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl line 1: not valid JSON"):
        read_prompt_file(tmp_path / "broken.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="holds no prompt"):
        read_prompt_file(tmp_path / "empty.txt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected a .txt"):
        read_prompt_file(tmp_path / "x.csv")
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "references": ["b", "c"]}\n{"prompt": "d", "reference": "e"}\n')
    assert [(p.text, p.references) for p in read_prompt_file(good)] == [("a", ("b", "c")), ("d", ("e",))]


def test_generation_is_deterministic_under_a_seed() -> None:
    from splitft.model.loading import load_model

    tok = tokenizer()
    model = load_model("tiny:llama", vocab_size=len(tok), seed=0)
    prompts = ["Meaning representation: name[Alimentum]\nDescription: ", "Hello"]
    args = dict(max_new_tokens=6, batch_size=2, sample=True, temperature=1.0, top_p=1.0)
    first, again = (generate_texts(model, tok, prompts, seed=5, **args) for _ in range(2))
    assert first == again
    assert generate_texts(model, tok, prompts, seed=6, **args) != first
    greedy = generate_texts(model, tok, prompts, max_new_tokens=6)
    assert greedy == generate_texts(model, tok, prompts, max_new_tokens=6, seed=99)  # no randomness
    assert tok.padding_side == "right" or tok.padding_side == "left"  # left as it was found
    assert generate_texts(model, tok, prompts[:1], max_new_tokens=6) == greedy[:1]  # batching changes nothing


def _events(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files (TFRecord frames of Event protos)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.iterdir()):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("gen") / "run"
    argv = [
        "train", "--model.name", "tiny:llama", "--model.keep_layers", "2", "--data.train", "e2e",
        "--data.max_samples", "120", "--data.max_length", "96", "--federation.num_clients", "2",
        "--federation.rounds", "2", "--eval.every", "1", "--eval.max_samples", "8",
        "--eval.generation_metrics", "bleu,rouge_l,nist,chrf", "--eval.generation_samples", "4",
        "--eval.max_new_tokens", "6", "--eval.tensorboard", "true", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_training_scores_generation_and_records_it(e2e_run) -> None:
    summary = json.loads((e2e_run / "summary.json").read_text())
    generation = summary["generation"]
    assert set(generation["metrics"]) == {"bleu", "rouge_l", "nist", "chrf"}
    assert generation["prompts"] == 4 and generation["decoding"] == "greedy"
    rows = [json.loads(line) for line in (e2e_run / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["references"] and "\n" not in r["output"] for r in rows)
    # the scores are those of the texts kept
    again = score(["bleu", "chrf"], [r["output"] for r in rows], [r["references"] for r in rows])
    assert again == {k: generation["metrics"][k] for k in again}


def test_tensorboard_mirrors_every_numeric_metrics_field(e2e_run) -> None:
    scalars = _events(e2e_run / FOLDER)
    rows = [json.loads(line) for line in (e2e_run / "metrics.jsonl").read_text().splitlines()]
    assert scalars["train_loss"] == [(r["round"], pytest.approx(r["train_loss"], rel=1e-6)) for r in rows]
    assert scalars["bytes_by_kind/activations"][-1][1] == rows[-1]["bytes_by_kind"]["activations"]
    assert [s for _, s in scalars["cuts/1"]] == [r["cuts"][1] for r in rows]
    assert "policy/0" not in scalars  # text is not a scalar


def test_eval_and_generate_commands(e2e_run, tmp_path, capsys) -> None:
    assert main(["eval", "--adapter", str(e2e_run / "adapter"), "--metrics", "bleu", "--generation-samples", "3",
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["generation"]["prompts"] == 3 and "bleu" in result["generation"]["metrics"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "Meaning representation: name[Zizzi]\\nDescription: ", "reference": "Zizzi."}\n'
    )
    out = tmp_path / "g.jsonl"
    argv = ["generate", "--adapter", str(e2e_run / "adapter"), "--prompts", str(prompts), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "4", "--metrics", "rouge_l"]) == 0
    assert json.loads(out.read_text())["references"] == ["Zizzi."]
    capsys.readouterr()
    for bad, message in (
        (["--metrics", "meteor"], "unknown generation metric"),
        (["--prompts", str(tmp_path / "missing.txt")], "missing.txt cannot be read"),
        (["--max-new-tokens", "0"], "--max-new-tokens = 0: must be >= 1"),
    ):
        assert main([*argv[:-4], "--out", str(tmp_path / "never.jsonl"), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and message in err[-1]
        assert not (tmp_path / "never.jsonl").exists()


def test_the_e2e_preset_compares_the_four_methods_by_generation_metrics() -> None:
    from pathlib import Path

    from splitft.cli.compare import load_preset

    base, plan = load_preset(Path(__file__).resolve().parents[1] / "configs" / "e2e.toml")
    assert base.data.train == "e2e" and base.eval.generation_metrics
    assert sorted(base.with_overrides(o).method for _, o in plan.runs) == sorted(
        ["centralized", "fedlora", "sfl-fixed", "splitft"]
    )
    for _, overrides in plan.runs:
        base.with_overrides(overrides).validate()
