"""Nested state dicts <-> (tensors, JSON): how saved state is stored and sent, without pickle.

Every stateful object returns a nested dict of JSON values and tensors from ``state_dict()``
(keys are strings). :func:`split_state` separates the tensors, keyed by their path
(``"main_server/copies/0/optimizer/exp_avg/<name>"``), from the rest, which stays a JSON
tree; :func:`join_state` puts them back. Checkpoints write the two as safetensors + JSON, and a
client sends its state as codec entries; neither ever unpickles anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SEP = "/"


def split_state(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors by path, the JSON rest)`` of a nested state dict."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str) or SEP in key:
            raise ValueError(f"state key {key!r} must be a string without {SEP!r}")
        path = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach()
        elif isinstance(value, Mapping):
            inner_tensors, inner_rest = split_state(value, path + SEP)
            tensors.update(inner_tensors)
            rest[key] = inner_rest
        else:
            rest[key] = value
    return tensors, rest


def join_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """The nested state dict :func:`split_state` took apart."""
    state: dict[str, Any] = _copy_tree(rest)
    for path, tensor in tensors.items():
        *parents, leaf = path.split(SEP)
        node = state
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = tensor
    return state


def _copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
