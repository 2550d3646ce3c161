"""LoRA through PEFT, with a smaller rank at the cut (docs/architecture.md, D2).

PEFT injects one adapter configuration at rank ``r_others`` into every block. The model's own
LoRA parameters are only *slots*: each role keeps its own adapter tensors (a dict from
parameter name to tensor) and runs the model with them (see ``split.py``). The one **global
adapter set** is such a dict at ``r_others`` for every block; exporting copies it into the
slots and saves it with PEFT, so ``PeftModel.from_pretrained`` loads the result.

A copy of a block that is a cut block for some client trains at rank ``r_cut``: it keeps the
first ``r_cut`` components (rows of A, columns of B) and has the others set to zero in both
A and B. A zeroed pair gets zero gradient (dA needs B, dB needs A), so training is exactly
rank ``r_cut`` with the same scaling ``alpha / r_others`` for every rank; only the trained
components travel and count as trainable parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from splitft.errors import ConfigError
from splitft.model.families import Family

Adapters = dict[str, torch.Tensor]
"""Adapter tensors keyed by parameter name relative to the causal LM."""


def attach_lora(
    model: nn.Module,
    family: Family,
    rank: int,
    alpha: float,
    target_modules: Iterable[str] = (),
    seed: int = 0,
) -> PeftModel:
    """Inject LoRA (rank ``rank`` everywhere) into ``model`` in place; the slots stay frozen."""
    targets = list(target_modules) or list(family.lora_targets)
    if not targets:
        raise ConfigError(
            f"lora.target_modules is empty and family '{family.name}' has no default targets; "
            "name the modules to adapt, e.g. --lora.target_modules q_proj,v_proj"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=family.conv1d,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # LoRA's A initialisation is random: make it the run's seed
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as err:
            raise ConfigError(f"lora.target_modules {targets} do not match the model: {err}") from None
    peft_model.requires_grad_(False)
    return peft_model


@dataclass(frozen=True)
class AdapterLayout:
    """Which adapter tensors belong to which block, and their full shapes."""

    names_by_block: dict[int, list[str]]
    shapes: dict[str, torch.Size]
    rank: int

    @classmethod
    def of(cls, model: nn.Module, family: Family) -> AdapterLayout:
        pattern = re.compile(rf"^{re.escape(family.blocks)}\.(\d+)\.")
        by_block: dict[int, list[str]] = {}
        shapes: dict[str, torch.Size] = {}
        rank = 0
        for name, param in model.named_parameters():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            match = pattern.match(name)
            if match is None:
                raise ConfigError(
                    f"LoRA module '{name}' is outside the decoder blocks; adapt block modules only"
                )
            by_block.setdefault(int(match.group(1)), []).append(name)
            shapes[name] = param.shape
            rank = param.shape[0] if is_a(name) else param.shape[1]
        return cls(by_block, shapes, rank)

    def names(self, blocks: Iterable[int]) -> list[str]:
        return [name for b in blocks for name in self.names_by_block.get(b, [])]

    def num_params(self, name: str, rank: int) -> int:
        """Trainable parameters of one tensor at ``rank`` components."""
        shape = self.shapes[name]
        other = shape[1] if is_a(name) else shape[0]
        return rank * other


def is_a(name: str) -> bool:
    return ".lora_A." in name


def truncate(name: str, tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """The first ``rank`` components: rows of A, columns of B."""
    return tensor[:rank] if is_a(name) else tensor[:, :rank]


def pad_to(name: str, tensor: torch.Tensor, full: torch.Size) -> torch.Tensor:
    """Zero-pad a truncated tensor back to its full shape."""
    if tensor.shape == full:
        return tensor
    out = tensor.new_zeros(full)
    if is_a(name):
        out[: tensor.shape[0]] = tensor
    else:
        out[:, : tensor.shape[1]] = tensor
    return out


def component_mask(name: str, full: torch.Size, rank: int) -> torch.Tensor:
    """1 where a component index < ``rank``, broadcastable to the tensor."""
    r = full[0] if is_a(name) else full[1]
    keep = (torch.arange(r) < rank).float()
    return keep[:, None] if is_a(name) else keep[None, :]


def initial_adapters(model: nn.Module) -> Adapters:
    """The freshly initialised LoRA slots of ``model`` (A random, B zero) as a global set."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if ".lora_" in name}


def export_adapters(peft_model: PeftModel, adapters: Mapping[str, torch.Tensor], out_dir: str | Path) -> None:
    """Save ``adapters`` in PEFT's format (loadable with ``PeftModel.from_pretrained``)."""
    slots = dict(peft_model.base_model.model.named_parameters())
    with torch.no_grad():
        for name, tensor in adapters.items():
            slots[name].copy_(tensor)
    peft_model.save_pretrained(str(out_dir))


def copy_ranks(layout: AdapterLayout, blocks: Iterable[int], cut_block: int, r_cut: int) -> dict[str, int]:
    """Trained rank of each tensor of a copy of ``blocks``: ``r_cut`` on ``cut_block``."""
    return {name: (r_cut if b == cut_block else layout.rank) for b in blocks for name in layout.names([b])}


def full_ranks(layout: AdapterLayout) -> dict[str, int]:
    """Every adapter tensor at ``r_others``: nothing is a cut block without a cut."""
    return {name: layout.rank for name in layout.shapes}


def lora_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(A name, B name)`` of every adapted module among ``names``."""
    names = list(names)
    return [
        (n, n.replace(".lora_A.", ".lora_B."))
        for n in names
        if is_a(n) and n.replace(".lora_A.", ".lora_B.") in names
    ]
