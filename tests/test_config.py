"""Tests of the typed config: TOML, overrides, validation and the generated CLI options."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from splitft import config as config_module
from splitft import config_cli, config_rules
from splitft.choices import SCHEDULES
from splitft.config import FIELD_TYPES, Config, LoraConfig
from splitft.config_cli import add_config_arguments, config_from_args, field_docs
from splitft.config_io import convert_value
from splitft.errors import ConfigError


def _custom() -> Config:
    """A config that differs from the defaults in every kind of field, lists included."""
    return Config().with_overrides(
        {
            "model.name": "tiny:llama",
            "data.max_length": "64",
            "data.alpha": "0.25",
            "federation.num_clients": "3",
            "split.cuts": "1,2,3",
            "lora.target_modules": "q_proj,v_proj",
            "train.lr": "3e-4",
            "train.schedule": "cosine",
            "seed": "11",
            "device": "cpu",
        }
    )


def test_defaults_validate() -> None:
    Config().validate()


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = _custom()
    cfg.to_toml(tmp_path / "run.toml")
    loaded = Config.from_toml(tmp_path / "run.toml")
    assert loaded == cfg
    assert loaded.split.cuts == [1, 2, 3]
    assert loaded.lora.target_modules == ["q_proj", "v_proj"]


def test_toml_round_trip_of_defaults_keeps_empty_lists(tmp_path: Path) -> None:
    Config().to_toml(tmp_path / "run.toml")
    text = (tmp_path / "run.toml").read_text()
    assert "cuts = []" in text
    loaded = Config.from_toml(tmp_path / "run.toml")
    assert loaded == Config()
    assert loaded.split.cuts == [] and loaded.lora.target_modules == []


def test_dict_round_trip_and_partial_dict() -> None:
    cfg = _custom()
    assert Config.from_dict(cfg.to_dict()) == cfg
    partial = Config.from_dict({"lora": {"r_cut": 4}, "seed": 3})
    assert partial.lora.r_cut == 4 and partial.seed == 3
    assert partial.lora.r_others == LoraConfig().r_others


def test_from_dict_does_not_alias_lists() -> None:
    cuts = [2, 3]
    cfg = Config.from_dict({"split": {"cuts": cuts}})
    cuts.append(4)
    assert cfg.split.cuts == [2, 3]


def test_int_in_toml_is_accepted_for_float(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[lora]\nalpha = 16\n[train]\nlr = 1\n")
    cfg = Config.from_toml(tmp_path / "run.toml")
    assert cfg.lora.alpha == 16.0 and isinstance(cfg.lora.alpha, float)
    assert isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("lora.r_cut", "4", 4),
        ("lora.alpha", "16", 16.0),
        ("train.lr", "1e-4", 1e-4),
        ("train.schedule", "linear", "linear"),
        ("model.tokenizer", "", ""),
        ("seed", "7", 7),
        ("split.cuts", "2", [2]),
        ("split.cuts", "2,4,6", [2, 4, 6]),
        ("split.cuts", "[2, 4, 6]", [2, 4, 6]),
        ("split.cuts", " 2 , 4 ", [2, 4]),
        ("split.cuts", "", []),
        ("split.cuts", "[]", []),
        ("lora.target_modules", "q_proj", ["q_proj"]),
        ("lora.target_modules", "q_proj, v_proj", ["q_proj", "v_proj"]),
        ("lora.target_modules", "", []),
    ],
)
def test_string_overrides_are_parsed_by_field_type(key: str, text: str, expected: object) -> None:
    cfg = Config().with_overrides({key: text})
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
    assert value == expected
    assert type(value) is type(expected)


def test_non_string_overrides_are_type_checked_not_parsed() -> None:
    cfg = Config().with_overrides({"split.cuts": [3, 4], "lora.alpha": 8, "seed": 2})
    assert cfg.split.cuts == [3, 4]
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.seed == 2
    with pytest.raises(ConfigError, match="split.cuts: expected a list of integers"):
        Config().with_overrides({"split.cuts": [3, "4"]})


def test_with_overrides_leaves_the_original_alone() -> None:
    base = Config()
    changed = base.with_overrides({"split.cuts": "2,3", "lora.r_cut": "4"})
    assert base == Config()
    assert changed.split.cuts == [2, 3] and changed.lora.r_cut == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("NO", False)],
)
def test_bool_parsing(text: str, expected: bool) -> None:
    # No field is a bool yet; the converter is exercised directly so the first one works.
    assert convert_value("x.flag", text, bool, parse_strings=True) is expected


def test_bool_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match=r"x\.flag: expected a boolean .*got 'maybe'"):
        convert_value("x.flag", "maybe", bool, parse_strings=True)
    with pytest.raises(ConfigError, match="x.flag: expected a boolean"):
        convert_value("x.flag", 1, bool, parse_strings=False)


def test_unknown_field_suggests_the_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({"lora.rcut": "4"})
    assert str(info.value) == (
        "unknown field 'lora.rcut'; did you mean 'lora.r_cut'? "
        "fields of [lora]: r_cut, r_others, cut_rank_sides, alpha, target_modules"
    )


def test_unknown_top_level_field_and_section() -> None:
    with pytest.raises(ConfigError, match=r"unknown field 'sed'; did you mean 'seed'\?.*top-level fields:"):
        Config().with_overrides({"sed": "1"})
    with pytest.raises(ConfigError, match=r"unknown field 'lorra\.r_cut'; did you mean 'lora\.r_cut'\?"):
        Config().with_overrides({"lorra.r_cut": "1"})
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({"qqq.zzz": "1"})
    assert "did you mean" not in str(info.value)
    assert "sections: model, data, federation" in str(info.value)


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[lora]\nrank = 4\n")
    with pytest.raises(ConfigError, match=r"run\.toml: unknown field 'lora\.rank'.*fields of \[lora\]"):
        Config.from_toml(tmp_path / "run.toml")


def test_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[lora\] must be a table"):
        Config.from_dict({"lora": 4})


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("train.batch_size", "four", "train.batch_size: expected an integer, got 'four'"),
        ("train.batch_size", "4.0", "train.batch_size: expected an integer, got '4.0'"),
        ("train.lr", "fast", "train.lr: expected a number, got 'fast'"),
        ("split.cuts", "2,x", "split.cuts: expected a list of integers"),
        ("seed", "", "seed: expected an integer, got ''"),
    ],
)
def test_wrong_type_from_cli(key: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({key: text})
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[train]\nbatch_size = "4"\n', "train.batch_size: expected an integer, got '4'"),
        ("[train]\nbatch_size = true\n", "train.batch_size: expected an integer, got True"),
        ("[train]\nbatch_size = 4.0\n", "train.batch_size: expected an integer, got 4.0"),
        ('[lora]\nalpha = "32"\n', "lora.alpha: expected a number, got '32'"),
        ("[split]\ncuts = 2\n", "split.cuts: expected a list of integers"),
        ('[split]\ncuts = ["2"]\n', "split.cuts: expected a list of integers"),
        ("[model]\nname = 3\n", "model.name: expected a string, got 3"),
        ('seed = "0"\n', "seed: expected an integer, got '0'"),
    ],
)
def test_wrong_type_from_toml(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_and_malformed_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_toml(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[lora\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        Config.from_toml(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"federation.num_clients": "0"}, "federation.num_clients = 0"),
        ({"federation.rounds": "0"}, "federation.rounds = 0"),
        ({"federation.local_steps": "0"}, "federation.local_steps = 0"),
        ({"federation.clients_per_round": "-1"}, "federation.clients_per_round = -1"),
        ({"federation.clients_per_round": "6"}, "federation.clients_per_round = 6"),
        ({"lora.r_cut": "0"}, "lora.r_cut = 0"),
        ({"lora.r_others": "0", "lora.r_cut": "1"}, "lora.r_others = 0"),
        ({"lora.r_cut": "32"}, "lora.r_cut = 32: must be <= lora.r_others = 16"),
        ({"lora.alpha": "0"}, "lora.alpha = 0.0"),
        ({"train.batch_size": "0"}, "train.batch_size = 0"),
        ({"train.lr": "0"}, "train.lr = 0.0"),
        ({"train.lr": "-1e-3"}, "train.lr = -0.001"),
        ({"train.lr": "nan"}, "train.lr = nan"),
        ({"train.weight_decay": "-0.1"}, "train.weight_decay = -0.1"),
        ({"train.warmup_steps": "-1"}, "train.warmup_steps = -1"),
        ({"train.schedule": "step"}, "train.schedule = 'step': must be one of constant, linear, cosine"),
        ({"train.max_grad_norm": "-1"}, "train.max_grad_norm = -1.0"),
        ({"eval.every": "0"}, "eval.every = 0"),
        ({"eval.max_samples": "0"}, "eval.max_samples = 0"),
        ({"eval.batch_size": "0"}, "eval.batch_size = 0"),
        ({"codec.activation_dtype": "int8"}, "codec.activation_dtype = 'int8'"),
        ({"codec.gradient_dtype": "fp64"}, "codec.gradient_dtype = 'fp64'"),
        ({"aggregation": "fedprox"}, "aggregation = 'fedprox'"),
        ({"runtime": "grpc"}, "runtime = 'grpc'"),
        ({"device": "tpu"}, "device = 'tpu'"),
        ({"threads": "-1"}, "threads = -1"),
        ({"data.max_length": "1"}, "data.max_length = 1: must be >= 2"),
        ({"data.max_samples": "-1"}, "data.max_samples = -1"),
        ({"data.test_fraction": "1"}, "data.test_fraction = 1.0"),
        ({"data.validation_fraction": "-0.1"}, "data.validation_fraction = -0.1"),
        ({"data.heldout_fraction": "1.5"}, "data.heldout_fraction = 1.5"),
        ({"data.partition": "dirichlet"}, "data.partition = 'dirichlet'"),
        ({"data.alpha": "0"}, "data.alpha = 0.0"),
        ({"data.bins": "0"}, "data.bins = 0"),
        ({"data.alpha": "inf"}, "data.alpha = inf: must be > 0 and finite"),
        (
            {"data.validation_fraction": "0.6", "data.test_fraction": "0.5"},
            "data.test_fraction = 0.5: must be < 1 - data.validation_fraction = 0.4",
        ),
        ({"seed": "-1"}, "seed = -1: must be >= 0"),
        ({"policy.name": "adaptive"}, "policy.name = 'adaptive'"),
        ({"split.cuts": "2,0"}, "split.cuts = [2, 0]: every cut must be >= 1"),
        ({"split.cuts": "1,2"}, "split.cuts = [1, 2]: must hold 0, 1 or num_clients=5 values"),
        ({"model.keep_layers": "-1"}, "model.keep_layers = -1"),
    ],
)
def test_validate_rejects(overrides: dict[str, str], expected: str) -> None:
    cfg = Config().with_overrides(overrides)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"federation.clients_per_round": "5"},
        {"split.cuts": "3"},
        {"split.cuts": "1,2,3,4,5"},
        {"lora.r_cut": "16"},
        {"train.max_grad_norm": "0", "train.warmup_steps": "0", "threads": "0"},
        {"data.test_fraction": "0", "data.partition": "length-dirichlet"},
        {"codec.activation_dtype": "bf16", "codec.gradient_dtype": "fp16"},
        {"device": "cuda", "train.schedule": "linear"},
    ],
)
def test_validate_accepts_edge_values(overrides: dict[str, str]) -> None:
    Config().with_overrides(overrides).validate()


def test_validate_rejects_wrong_types_set_in_python() -> None:
    cfg = Config()
    cfg.train.batch_size = "4"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got '4'"):
        cfg.validate()


def test_choice_sets_can_be_extended(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config().with_overrides({"train.schedule": "step"})
    with pytest.raises(ConfigError):
        cfg.validate()
    monkeypatch.setattr(config_rules, "SCHEDULES", (*SCHEDULES, "step"))
    cfg.validate()


def test_field_docs() -> None:
    docs = field_docs(LoraConfig)
    assert list(docs) == ["r_cut", "r_others", "cut_rank_sides", "alpha", "target_modules"]
    assert docs["r_cut"] == "LoRA rank of the cut block (on the sides cut_rank_sides names)."
    # Multi-line docstrings are collapsed to one line.
    assert field_docs(config_module.SplitConfig)["cuts"] == (
        "Cut layer per client: one value for all, or one per client; a client runs blocks "
        "[0, cut). Empty = spread evenly over 1..M-1."
    )
    top = field_docs(Config)
    assert "seed" in top and "model" not in top  # sections carry no docstring


def test_every_field_has_a_docstring() -> None:
    for key in FIELD_TYPES:
        section, _, name = key.rpartition(".")
        cls = config_module.SECTIONS[section] if section else Config
        assert field_docs(cls).get(name), f"{key} has no docstring"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitft")
    parser.add_argument("--config", default=None)
    add_config_arguments(parser)
    return parser


def test_argparse_round_trip() -> None:
    # Two cuts need two clients: validate() allows 0, 1 or num_clients cuts.
    args = ["--lora.r_cut", "4", "--split.cuts", "2,3", "--seed", "7", "--federation.num_clients", "2"]
    ns = _parser().parse_args(args)
    assert vars(ns) == {
        "config": None,
        "lora.r_cut": "4",
        "split.cuts": "2,3",
        "seed": "7",
        "federation.num_clients": "2",
    }
    cfg = config_from_args(ns, ns.config)
    assert cfg.lora.r_cut == 4 and cfg.split.cuts == [2, 3] and cfg.seed == 7
    assert cfg.federation.num_clients == 2
    reset = {"lora.r_cut": 8, "split.cuts": [], "seed": 0, "federation.num_clients": 5}
    assert cfg.with_overrides(reset) == Config()  # nothing else changed


def test_config_from_args_applies_cli_over_file(tmp_path: Path) -> None:
    Config().with_overrides({"lora.r_cut": "2", "train.batch_size": "16"}).to_toml(tmp_path / "run.toml")
    ns = _parser().parse_args(["--lora.r_cut", "4"])
    cfg = config_from_args(ns, str(tmp_path / "run.toml"))
    assert cfg.lora.r_cut == 4  # the command line wins
    assert cfg.train.batch_size == 16  # the file is kept where the command line is silent


def test_config_from_args_validates() -> None:
    ns = _parser().parse_args(["--train.schedule", "step"])
    with pytest.raises(ConfigError, match="train.schedule = 'step'"):
        config_from_args(ns, None)
    ns = _parser().parse_args(["--train.batch_size", "four"])
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got 'four'"):
        config_from_args(ns, None)


def test_help_shows_docstrings_defaults_and_groups() -> None:
    text = " ".join(_parser().format_help().split())  # undo argparse's line wrapping
    assert "LoRA rank of the cut block (on the sides cut_rank_sides names). (default: 8)" in text
    assert "Peak learning rate of AdamW. (default: 0.001)" in text
    assert "(default: [])" in text
    assert "(default: '')" in text
    for title in ("[model]:", "[lora]:", "[split]:", "[top-level]:"):
        assert title in text
    assert "--seed INT" in text and "--split.cuts INTS" in text


def test_help_survives_percent_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse %-formats help; a docstring with '%' must not break --help.
    docs = dict(field_docs(LoraConfig), alpha="Scaling in %, like 50%.")
    real = config_cli.field_docs
    monkeypatch.setattr(config_cli, "field_docs", lambda cls: docs if cls is LoraConfig else real(cls))
    assert "Scaling in %, like 50%." in " ".join(_parser().format_help().split())


def test_nan_never_validates() -> None:
    cfg = Config().with_overrides({"data.alpha": "nan"})
    assert math.isnan(cfg.data.alpha)
    with pytest.raises(ConfigError, match="data.alpha = nan"):
        cfg.validate()
