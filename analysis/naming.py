"""Parameter names: natural ordering and grouping into layers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_DIGITS = re.compile(r"([0-9]+)")
# Parameter-name suffixes of frameworks that join layer and parameter with "_" (DL4J: `lstm-1_W`, `norm-1_gamma`).
_UNDERSCORE_SUFFIXES = frozenset({"W", "RW", "b", "gamma", "beta", "mean", "var", "weight", "bias"})


@lru_cache(maxsize=1 << 17)  # a run's file names are sorted again at every `watch` refresh
def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders `layers.2` before `layers.10`.

    Digit runs compare by value without int(), which refuses runs over 4300 digits: a shorter run (leading
    zeros aside) is smaller, runs of one length compare as text.
    """
    return tuple(_part_key(part) for part in _DIGITS.split(name) if part)


def _part_key(part: str) -> tuple[int, int, str]:
    if part.isascii() and part.isdigit():
        value = part.lstrip("0")
        return (0, len(value), value)
    return (1, 0, part)


@lru_cache(maxsize=1 << 16)  # called for every parameter at every step
def layer_of(param: str) -> str:
    """The layer a parameter belongs to: `enc.layers.0.q.weight` -> `enc.layers.0.q`, `lstm-1_W` -> `lstm-1`."""
    cut = max(param.rfind("."), param.rfind("/"))
    if cut >= 0:
        head, tail = param[:cut], param[cut + 1 :]
        return head if head and tail else param
    head, _, tail = param.rpartition("_")
    return head if head and tail in _UNDERSCORE_SUFFIXES else param


# Wrapper prefixes that say how a model was run, not what it is. `module.`: DistributedDataParallel and
# DataParallel; `model.`: a LightningModule (or any wrapper) holding the network as `self.model`. Both are
# also ordinary attribute names, so they are stripped only when *every* parameter of the run starts with
# them: a wrapper wraps everything, while a model that merely has a `model` submodule has other parameters.
_RUN_WIDE_WRAPPERS = ("module.", "model.")
# torch.compile's OptimizedModule keeps the compiled module as `_orig_mod`, wherever it was compiled
# (`_orig_mod.fc.weight`, `encoder._orig_mod.fc.weight`); no model names an attribute that, so it goes anywhere.
_COMPILE_SEGMENT = re.compile(r"(?:^|(?<=[./]))_orig_mod[./]")
# Flax keeps trainable parameters in the `params` collection: `flatten_dict(grads, sep="/")` gives
# `params/Dense_0/kernel` even in a gradients file. Other collections (`batch_stats/...`) keep their prefix.
_FLAX_COLLECTION = "params/"


def strip_wrappers(names: Iterable[str]) -> dict[str, str]:
    """Each name of a run without the wrapper prefixes of DDP, torch.compile, Lightning and Flax.

    `_orig_mod.` segments and a leading `params/` go from every name; then `module.` or `model.` while every
    name starts with it. Names that would be left empty keep their prefix.
    """
    stripped = {}
    for name in names:
        short = _COMPILE_SEGMENT.sub("", name)
        short = short.removeprefix(_FLAX_COLLECTION) if len(short) > len(_FLAX_COLLECTION) else short
        stripped[name] = short or name
    while stripped:
        prefix = next(
            (p for p in _RUN_WIDE_WRAPPERS if all(s.startswith(p) for s in stripped.values())), None
        )
        if prefix is None or any(len(s) == len(prefix) for s in stripped.values()):
            break
        stripped = {name: short[len(prefix) :] for name, short in stripped.items()}
    return stripped


# How a module type or a parameter name says what kind of layer a parameter belongs to. Module types come from
# the recorder (`gradcheck.context` metadata, field `modules`); without them, the layer's name decides.
_EMBEDDING_TYPES = re.compile(r"embed", re.IGNORECASE)  # Embedding, EmbeddingBag, flax Embed, keras Embedding
_NORM_TYPES = re.compile(r"norm", re.IGNORECASE)  # LayerNorm, BatchNorm2d, GroupNorm, RMSNorm, LlamaRMSNorm
# Name parts: `embed` (embed_tokens, pos_embed), GPT-2's `wte`/`wpe`, `tok_` (tok_embeddings), `lookup`.
_EMBEDDING_NAMES = re.compile(r"embed|(?:^|[._/])(?:wte|wpe)(?:$|[._/])|tok_|lookup", re.IGNORECASE)
# `norm` (layernorm, norm1, RMSNorm), `ln_` (GPT-2's ln_1, ln_f), `bn` at the start of a part (bn1, bn_2).
_NORM_NAMES = re.compile(r"norm|(?:^|[._/])(?:ln_|bn)", re.IGNORECASE)


def layer_role(param: str, module_type: str | None = None) -> str | None:
    """ "embedding", "norm" or None (anything else) for a parameter, from its module type else its layer name."""
    if module_type:
        if _EMBEDDING_TYPES.search(module_type):
            return "embedding"
        return "norm" if _NORM_TYPES.search(module_type) else None
    layer = layer_of(param)
    if _EMBEDDING_NAMES.search(layer):
        return "embedding"
    return "norm" if _NORM_NAMES.search(layer) else None
