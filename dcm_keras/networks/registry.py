"""The registry of networks by name, grouped in families (timm's `_registry.py` pattern).

A family module registers one named builder per network with `register_network`:

    @register_network("resnet20", family="cifar_resnet")
    def resnet20(**kwargs) -> CifarResNet:
        return CifarResNet(depth=20, **kwargs)

or one builder for a parametrised family of names, given a regex and a concrete example:

    @register_network("wrn_D_K", family="wrn", regex=r"wrn_(\\d+)_(\\d+)", example="wrn_10_1")
    def wide_resnet(match, **kwargs) -> WideResNet: ...

An exact-name builder takes `(num_classes, input_shape, aux_heads, **kwargs)`; a pattern builder
takes the regex match first. Families register their members smallest first, and a pattern's
example is its cheapest member, so `representative(family)` is the family's cheapest network to
build: what the contract tests (tests/networks/test_contract.py) build.

This module imports no family, so the family modules import it without a cycle; importing
`dcm_keras.networks` imports the families, which fills the registry.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Optional, TypeVar

import keras

from dcm_keras.errors import UserError

Builder = TypeVar("Builder", bound=Callable)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: an exact network name, or a pattern such as `wrn_D_K`."""

    name: str
    family: str
    builder: Callable
    regex: Optional[re.Pattern] = None
    example: Optional[str] = None  # a concrete name the pattern matches


# In registration order: exact names and patterns alike. Registering a name again replaces it.
_ENTRIES: Dict[str, Entry] = {}


def _add(entry: Entry) -> None:
    _ENTRIES[entry.name] = entry


def register(name: str, builder: Callable, family: Optional[str] = None) -> None:
    """Registers `builder` under an exact network name (its own family unless `family` is given)."""
    _add(Entry(name, family or name, builder))


def register_pattern(regex: str, pattern: str, builder: Callable, family: Optional[str] = None,
                     example: Optional[str] = None) -> None:
    """Registers a parametrised family, e.g. `wrn_(\\d+)_(\\d+)` shown as `wrn_D_K`.

    `builder(match, **kwargs)` receives the regex match; `example` is a concrete name that the
    regex must match (the family's cheapest member).
    """
    compiled = re.compile(regex + r"\Z")
    if example is not None and not compiled.match(example):
        raise ValueError(f"Example {example!r} does not match the pattern {regex!r}.")
    _add(Entry(pattern, family or pattern, builder, compiled, example))


def register_network(name: str, *, family: str, regex: Optional[str] = None,
                     example: Optional[str] = None) -> Callable[[Builder], Builder]:
    """Decorator that registers the decorated builder under `name` (a pattern if `regex` is given).

    Returns the builder unchanged, so it stays a plain, importable, documented function.
    """
    def decorate(builder: Builder) -> Builder:
        if regex is None:
            register(name, builder, family)
        else:
            register_pattern(regex, name, builder, family, example)
        return builder
    return decorate


def list_networks(family: Optional[str] = None) -> List[str]:
    """Names accepted by `build`, exact names first (sorted), then parametrised families.

    With `family`, only that family's names, in registration order (smallest first).
    """
    if family is not None:
        return [e.name for e in _ENTRIES.values() if e.family == family]
    exact = sorted(e.name for e in _ENTRIES.values() if e.regex is None)
    return exact + [e.name for e in _ENTRIES.values() if e.regex is not None]


def list_families() -> List[str]:
    """The registered families (e.g. "wrn", "mobilenet", "cifar_resnet", "resnet", "keras")."""
    return sorted({e.family for e in _ENTRIES.values()})


def representative(family: str) -> str:
    """A buildable name of `family`: its first-registered member, or its pattern's example."""
    for entry in _ENTRIES.values():
        if entry.family == family:
            if entry.regex is not None and entry.example is None:
                continue
            return entry.example or entry.name
    raise UserError(f"Unknown network family {family!r}. Families: "
                    f"{', '.join(list_families())}.")


def family_of(name: str) -> str:
    """The family of a network name (an exact name, or one that a pattern matches)."""
    return _lookup(name)[0].family


def _lookup(name: str):
    """(entry, match): the entry that builds `name`, and the pattern's match (None if exact)."""
    if not isinstance(name, str):
        raise TypeError(f"Network name must be a string, got {type(name).__name__}.")
    entry = _ENTRIES.get(name)
    if entry is not None and entry.regex is None:
        return entry, None
    for entry in _ENTRIES.values():
        match = entry.regex.match(name) if entry.regex is not None else None
        if match:
            return entry, match
    raise UserError(
        f"Unknown network {name!r}. Valid names: {', '.join(list_networks())}.")


def build(name: str, num_classes: int, input_shape=(32, 32, 3), aux_heads: bool = True,
          **kwargs) -> keras.Model:
    """Builds a registered network.

    Args:
        name: a name from `list_networks()`, e.g. "wrn_28_10", "mobilenet", "resnet56".
        num_classes: number of classes of every classifier head.
        input_shape: (height, width, channels).
        aux_heads: attach the family's auxiliary classifier heads (the DCM design).
        **kwargs: family options, e.g. `weight_decay=5e-4`, `synchronized_bn=False`.

    Returns:
        A functional `keras.Model` with a dict output of logits, shallow to deep.
    """
    entry, match = _lookup(name)
    args = () if match is None else (match,)
    return entry.builder(*args, num_classes=num_classes, input_shape=input_shape,
                         aux_heads=aux_heads, **kwargs)
