"""Every preset in configs/ parses and validates; the hub-model presets run a round offline on a
tiny random model of the same family (their real weights cannot be had here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitft.cli import main
from splitft.cli.compare import Plan, compare, load_preset
from splitft.config import Config
from splitft.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("*/*.toml"))
HUB_TO_TINY = {
    "gpt2": "tiny:gpt2",
    "facebook/opt-125m": "tiny:opt",
    "EleutherAI/gpt-neo-125m": "tiny:gpt-neo",
}
# What a tiny offline round changes; everything else (method, ranks, cuts, devices, partition) stays.
TINY = {
    "model.keep_layers": 3, "data.max_length": 32, "data.max_samples": 0, "federation.rounds": 1,
    "eval.every": 1, "eval.max_samples": 4, "policy.heldout_samples": 2,
}  # fmt: skip


def test_there_are_cpu_and_paper_variants_of_every_preset():
    cpu = {p.name for p in (CONFIGS / "cpu").glob("*.toml")}
    paper = {p.name for p in (CONFIGS / "paper").glob("*.toml")}
    assert {"table1.toml", "table2.toml", "fig2a.toml", "fig3.toml", "methods.toml"} <= cpu
    assert cpu <= paper
    assert {f"generalisation-{f}.toml" for f in ("gpt2", "opt", "gpt-neo")} <= paper


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_parses_and_every_run_validates(path):
    base, plan = load_preset(path)
    assert plan.description and plan.runs
    labels = [label for label, _ in plan.runs]
    assert len(set(labels)) == len(labels)
    for _, overrides in plan.runs:
        base.with_overrides(overrides).validate()
    # the preset is also a plain config: `splitft train --config PRESET` trains its base
    assert Config.from_toml(path) == base


def test_paper_presets_are_at_paper_scale():
    for path in (CONFIGS / "paper").glob("*.toml"):
        cfg, _ = load_preset(path)
        assert cfg.model.name in HUB_TO_TINY, path
        assert (cfg.data.train, cfg.data.max_length, cfg.federation.num_clients) == ("wikitext-2", 512, 5)
        assert (cfg.federation.rounds, cfg.train.batch_size, cfg.train.lr) == (1200, 4, 5e-5)


def test_fig3_holds_the_partition_equal_between_the_methods():
    _, plan = load_preset(CONFIGS / "cpu" / "fig3.toml")
    partitions: dict[tuple, set[str]] = {}
    for _, overrides in plan.runs:
        key = (overrides["data.partition"], overrides.get("data.alpha"))
        partitions.setdefault(key, set()).add(overrides["method"])
    assert len(partitions) == 5 and all(
        methods == {"sfl-fixed", "splitft"} for methods in partitions.values()
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"line {i} " + "the lord speaks " * (1 + i % 6) for i in range(80)) + "\n")
    return path


@pytest.mark.parametrize("family", ["gpt2", "opt", "gpt-neo"])
def test_generalisation_preset_runs_a_round_on_a_tiny_model_of_its_family(family, corpus, tmp_path):
    base, plan = load_preset(CONFIGS / "paper" / f"generalisation-{family}.toml")
    tiny = base.with_overrides(
        {**TINY, "model.name": HUB_TO_TINY[base.model.name], "data.train": str(corpus)}
    )
    rows = compare(tiny, Plan(plan.runs), tmp_path / "cmp")
    assert [r["method"] for r in rows] == ["centralized", "fedlora", "sfl-fixed", "splitft"]
    for label, _ in plan.runs:
        summary = json.loads((tmp_path / "cmp" / label / "summary.json").read_text())
        assert summary["model"]["family"] == family.replace("-", "_") and summary["rounds"] == 1
    assert (tmp_path / "cmp" / "comparison.md").exists()


def test_compare_runs_a_preset_and_reuses_finished_runs(corpus, tmp_path, capsys):
    preset = tmp_path / "preset.toml"
    preset.write_text(
        'description = "two cuts"\nmethod = "sfl-fixed"\n[model]\nname = "tiny:llama"\nkeep_layers = 3\n'
        f'[data]\ntrain = "{corpus}"\n[federation]\nnum_clients = 2\nrounds = 1\n[split]\ncuts = [1]\n'
        '[eval]\nevery = 1\nmax_samples = 4\n[compare]\nvary = ["split.cuts=1,2"]\n'
    )
    assert main(["compare", "--preset", str(preset), "--out", str(tmp_path / "a")]) == 0
    assert "two cuts" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "a").iterdir() if p.is_dir()} == {"split.cuts=1", "split.cuts=2"}
    # another comparison that needs cut 2 again copies it instead of training it
    argv = ["compare", "--preset", str(preset), "--vary", "split.cuts=2,1", "--out", str(tmp_path / "b")]
    assert main([*argv, "--reuse", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert out.count("copied") == 2
    a, b = ((tmp_path / d / "split.cuts=2" / "metrics.jsonl").read_text() for d in ("a", "b"))
    assert a == b
    # a changed field is a different config: trained, not copied
    assert main([*argv, "--reuse", str(tmp_path / "a"), "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    assert "copied" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nname = 'tiny:llama'\n", "no \\[compare\\] table"),
        ("[compare]\nvary = []\n", "names no runs"),
        ("[compare]\nruns = 3\nvary = ['seed=1,2']\nextra = 1\n", "unknown keys in \\[compare\\]: extra"),
        ("[compare]\nvary = ['lora.r_cut=2,x']\n", "run 'lora.r_cut=x': lora.r_cut: expected an integer"),
        ("[compare]\nvary = 'seed=1,2'\n", "vary must be a list"),
        ("[compare]\nruns = 3\n", "runs must be tables"),
        (
            "[compare]\nvary = ['seed=1,2']\ntarget_ppl = '30'\n",
            "target_ppl must be a positive number, got '30'",
        ),
        ("[compare]\nvary = ['seed=1,2']\ntarget_ppl = -1\n", "target_ppl must be a positive number"),
        ("[compare.runs.'a/b']\nseed = 1\n[compare.runs.a_b]\nseed = 2\n", "would share the folder"),
    ],
)
def test_bad_presets_are_clear_errors(text, message, tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        base, plan = load_preset(preset)
        compare(base, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
