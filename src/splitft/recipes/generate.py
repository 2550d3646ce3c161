"""Text generation from a base model plus adapters, and the generation metrics of a run.

* :func:`prompt_set` turns a prompt/response split (E2E, GSM8K) into prompts with all their
  references (E2E has several per meaning representation) and draws a fixed, seeded subset,
  so CPU runs stay affordable and every method is scored on the same prompts.
* :func:`read_prompt_file` reads prompts from a ``.txt`` (one per non-empty line) or ``.jsonl``
  file (field ``prompt``, optional ``references``: a list of strings, or ``reference``).
* :func:`generate_texts` decodes greedily or by sampling (seeded: the same seed gives the same
  texts), in batches, left-padded, with Hugging Face's ``generate``.
* :func:`score_generation` is what ``fit`` runs after training when ``eval.generation_metrics``
  is set: the global adapters, copied into the model's LoRA slots, generate from the prompt
  subset; ``report/text_metrics.py`` scores them; ``generations.jsonl`` keeps every text.

A generated text is cut at its first line break when none of the references has one (E2E
descriptions are one line; an instruct model would otherwise go on): say so wherever it is
reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitft.data.prepare import prepare_data
from splitft.data.samples import Sample
from splitft.errors import ConfigError, DataError
from splitft.recipes.evaluate import load_adapter
from splitft.report.text_metrics import score

_TAG_PROMPTS = 11  # random stream of the prompt subset, apart from the data layer's


@dataclass(frozen=True)
class Prompt:
    text: str
    references: tuple[str, ...] = ()


def prompt_set(samples: Sequence[Sample], limit: int, seed: int) -> list[Prompt]:
    """The distinct prompts of a prompt/response split with their references (first-seen
    order), then at most ``limit`` of them drawn with ``seed`` (kept in that order)."""
    grouped: dict[str, list[str]] = {}
    for sample in samples:
        cut = sample.meta.get("prompt_chars")
        if cut is None:
            raise DataError(
                "generation metrics need a prompt/response test split (e2e, gsm8k, or a file of "
                "such samples); this test split is plain text"
            )
        grouped.setdefault(sample.text[:cut], []).append(sample.text[cut:].strip())
    prompts = [Prompt(p, tuple(refs)) for p, refs in grouped.items()]
    if len(prompts) > limit:
        keep = np.random.default_rng([seed, _TAG_PROMPTS]).choice(len(prompts), limit, replace=False)
        prompts = [prompts[i] for i in sorted(keep.tolist())]
    return prompts


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts of a ``.txt`` or ``.jsonl`` file; a DataError names the file and line otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"prompt file {path} cannot be read: {err}") from None
    if path.suffix == ".jsonl":
        prompts = [
            _prompt_record(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()
        ]
    elif path.suffix == ".txt":
        prompts = [Prompt(line) for line in text.splitlines() if line.strip()]
    else:
        raise DataError(f"prompt file {path}: expected a .txt (one prompt per line) or .jsonl file")
    if not prompts:
        raise DataError(f"prompt file {path} holds no prompt")
    return prompts


def _prompt_record(line: str, path: Path, number: int) -> Prompt:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        raise DataError(f"{path} line {number}: not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise DataError(f"{path} line {number}: expected an object with a string field 'prompt'")
    refs = record.get("references", [record["reference"]] if "reference" in record else [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{path} line {number}: 'references' must be a list of strings")
    return Prompt(record["prompt"], tuple(refs))


@torch.no_grad()
def generate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """The continuation of each prompt (special tokens removed): greedy, or sampled from the
    seeded generator (``sample``, ``temperature``, ``top_p``)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation appends on the right
    device = next(model.parameters()).device
    settings: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new_tokens}
    settings.update(temperature=temperature, top_p=top_p) if sample else settings.update(
        top_p=None, top_k=None
    )
    out: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(
                    list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
                )
                batch = {k: v.to(device) for k, v in batch.items()}
                tokens = model.generate(**batch, **settings, pad_token_id=tokenizer.pad_token_id)
                new = tokens[:, batch["input_ids"].shape[1] :]
                out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def trim(texts: Sequence[str], prompts: Sequence[Prompt]) -> list[str]:
    """Each text stripped, and cut at its first line break when its references have none."""
    out = []
    for text, prompt in zip(texts, prompts, strict=True):
        one_line = prompt.references and not any("\n" in r for r in prompt.references)
        out.append((text.strip().split("\n", 1)[0] if one_line else text).strip())
    return out


def write_generations(path: Path, prompts: Sequence[Prompt], texts: Sequence[str]) -> None:
    """One JSON object per line: ``prompt``, ``output``, ``references``."""
    rows = [
        {"prompt": p.text, "output": t, "references": list(p.references)}
        for p, t in zip(prompts, texts, strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def score_generation(
    peft_model: Any,
    adapters: Mapping[str, torch.Tensor],
    tokenizer: Any,
    samples: Sequence[Sample],
    metrics: Sequence[str],
    limit: int,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    out_file: Path,
) -> dict[str, Any]:
    """Generate from the seeded prompt subset of ``samples`` with ``adapters``, write every text
    to ``out_file`` (JSONL) and return the scores with how they were made."""
    prompts = prompt_set(samples, limit, seed)
    slots = dict(peft_model.base_model.model.named_parameters())
    with torch.no_grad():
        for name, tensor in adapters.items():
            slots[name].copy_(tensor)
    texts = trim(
        generate_texts(peft_model, tokenizer, [p.text for p in prompts], max_new_tokens, batch_size), prompts
    )
    write_generations(out_file, prompts, texts)
    return {
        "metrics": score(metrics, texts, [p.references for p in prompts]),
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "file": out_file.name,
    }


def check_metrics(names: Sequence[str]) -> list[str]:
    """``names`` if every one is a known generation metric (a ConfigError names the others)."""
    score(names, ["x"], [["x"]])  # validates the names on a trivial pair
    return list(names)


def _check_decoding(
    max_samples: int, max_new_tokens: int, batch_size: int, sample: bool, temperature: float, top_p: float
) -> None:
    for name, value in (
        ("--max-samples", max_samples),
        ("--max-new-tokens", max_new_tokens),
        ("--batch-size", batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{name} = {value}: must be >= 1")
    if sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ConfigError(
            f"--temperature {temperature} / --top-p {top_p}: need temperature > 0 and 0 < top_p <= 1"
        )


def generate_from_adapter(
    adapter: str | Path,
    out_file: str | Path,
    prompts_file: str | Path | None = None,
    data: str = "",
    max_samples: int = 32,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    metrics: Sequence[str] = (),
) -> dict[str, Any]:
    """``splitft generate``: texts from a saved adapter for the prompts of a file, or for a seeded
    subset of a corpus's test split (the run's own, or ``data``); JSONL rows ``prompt``,
    ``output``, ``references``; the ``metrics`` scores when references are known."""
    check_metrics(metrics)
    _check_decoding(max_samples, max_new_tokens, batch_size, sample, temperature, top_p)
    file_prompts = read_prompt_file(prompts_file)[:max_samples] if prompts_file else None
    saved = load_adapter(adapter, {"data.train": data} if data else {})
    if file_prompts is not None:
        prompts = file_prompts
    else:
        cfg = saved.cfg
        prepared = prepare_data(cfg.data, saved.tokenizer, cfg.federation.num_clients, cfg.seed)
        prompts = prompt_set(prepared.test_samples, max_samples, seed)
    raw = generate_texts(
        saved.model,
        saved.tokenizer,
        [p.text for p in prompts],
        max_new_tokens,
        batch_size,
        sample,
        temperature,
        top_p,
        seed,
    )
    texts = trim(raw, prompts)
    write_generations(Path(out_file), prompts, texts)
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "out": str(out_file),
        "decoding": "sampled" if sample else "greedy",
    }
    if metrics:
        if not all(p.references for p in prompts):
            raise DataError(
                "--metrics needs references for every prompt (a corpus test split or 'references' in the file)"
            )
        result["metrics"] = score(metrics, texts, [p.references for p in prompts])
    return result
