"""The data fields of the config: defaults, CLI overrides (booleans included), TOML and validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from splitft.config import Config, DataConfig
from splitft.config_cli import add_config_arguments, config_from_args, field_docs
from splitft.errors import ConfigError

NEW_FIELDS = ("samples_per_client", "pack", "keep_headings", "response_only", "partition_by")


def _from_cli(args: list[str], config_file: Path | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="splitft")
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(args), config_file)


def test_defaults_and_docstrings() -> None:
    defaults = {name: getattr(DataConfig(), name) for name in NEW_FIELDS}
    assert defaults == {
        "samples_per_client": 0,
        "pack": False,
        "keep_headings": False,
        "response_only": True,
        "partition_by": "length",
    }
    docs = field_docs(DataConfig)
    assert all(docs.get(name) for name in NEW_FIELDS)
    assert "no effect on plain-text corpora" in docs["response_only"].lower()


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("1", True), ("yes", True), ("false", False), ("no", False)]
)
def test_booleans_are_overridable_on_the_command_line(text: str, value: bool) -> None:
    cfg = _from_cli(["--data.pack", text, "--data.keep_headings", text, "--data.response_only", text])
    assert cfg.data.pack is cfg.data.keep_headings is cfg.data.response_only is value


def test_other_new_fields_on_the_command_line_and_in_toml(tmp_path: Path) -> None:
    cfg = _from_cli(
        [
            "--data.samples_per_client",
            "12000",
            "--data.partition_by",
            "genre",
            "--data.partition",
            "length-dirichlet",
        ]
    )
    assert (cfg.data.samples_per_client, cfg.data.partition_by) == (12000, "genre")
    toml = tmp_path / "run.toml"
    toml.write_text('[data]\npack = true\nresponse_only = false\npartition_by = "play"\n')
    loaded = _from_cli(["--data.keep_headings", "true"], toml)
    assert (loaded.data.pack, loaded.data.response_only, loaded.data.keep_headings) == (True, False, True)
    loaded.to_toml(tmp_path / "again.toml")
    assert Config.from_toml(tmp_path / "again.toml") == loaded


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--data.pack", "maybe"], r"data.pack: expected a boolean \(true/false/1/0/yes/no\), got 'maybe'"),
        (["--data.response_only", "2"], "data.response_only: expected a boolean"),
        (["--data.samples_per_client", "-1"], "data.samples_per_client = -1: must be >= 0"),
        (["--data.samples_per_client", "1.5"], "data.samples_per_client: expected an integer"),
        (["--data.partition_by", ""], "data.partition_by = '': must be 'length' or a meta column name"),
        (["--data.partition_by", " genre"], "data.partition_by = ' genre'"),
    ],
)
def test_bad_values_are_config_errors(args: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _from_cli(args)


def test_toml_type_errors(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('[data]\npack = "yes"\n')  # TOML has real booleans: a string is a mistake
    with pytest.raises(ConfigError, match="data.pack: expected a boolean"):
        Config.from_toml(toml)
