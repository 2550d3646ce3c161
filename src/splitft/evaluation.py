"""``splitft eval``: score a saved adapter exactly as the run that wrote it did.

The adapter folder is PEFT's format; it is loaded with stock ``PeftModel.from_pretrained`` on
the unsplit base model. The data split is rebuilt from the run's ``config.toml`` (next to the
adapter folder), so the test set is the one the run reported on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel

from splitft.config import Config
from splitft.data.prepare import prepare_data
from splitft.data.tokenize import pad_id_of
from splitft.errors import ConfigError
from splitft.federated.evaluate import evaluate
from splitft.model.loading import load_model, load_tokenizer
from splitft.model.split import SplitModel


def evaluate_adapter(
    adapter: str | Path,
    data: str = "",
    split: str = "test",
    max_samples: int = 0,
    max_length: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loss, perplexity and accuracy of ``adapter`` on the ``split`` of ``data``."""
    folder = Path(adapter)
    facts_file = folder / "splitft.json"
    if not (folder / "adapter_config.json").exists() or not facts_file.exists():
        raise ConfigError(f"--adapter {folder} is not an adapter folder written by `splitft train`")
    facts = json.loads(facts_file.read_text())
    run_config = folder.parent / "config.toml"
    cfg = Config.from_toml(run_config) if run_config.exists() else Config()
    overrides: dict[str, object] = {}
    if data:
        overrides["data.train"] = data
    if max_length:
        overrides["data.max_length"] = max_length
    cfg = cfg.with_overrides(overrides)
    tokenizer = load_tokenizer(facts["tokenizer"] or facts["model"])
    prepared = prepare_data(cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed)
    base = load_model(
        facts["model"], vocab_size=len(tokenizer), seed=facts["seed"], keep_layers=facts["keep_layers"]
    )
    model = PeftModel.from_pretrained(base, str(folder))
    dataset = prepared.test if split == "test" else prepared.validation
    result = evaluate(
        SplitModel(model.base_model.model),
        None,
        dataset,
        pad_id_of(tokenizer),
        batch_size,
        max_samples or cfg.eval.max_samples,
    )
    return {
        "adapter": str(folder),
        "split": split,
        "loss": result.loss,
        "ppl": result.ppl,
        "acc": result.acc,
        "tokens": result.tokens,
    }
