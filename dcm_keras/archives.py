"""Limits on a `.keras` file before anything in it is read: `load_network` opens files it did not
write, and a small hostile file must be refused in milliseconds, not after gigabytes and seconds.

- Decompressed sizes. A zip member declares its size in the central directory, and Python's
  `zipfile` never returns more than the declared size (a member whose data expand further fails
  its CRC check), so the declared sizes bound what reading costs. Keras writes `.keras` files
  uncompressed (stored), so a genuine file expands to about its own size; one re-zipped with
  deflate, to a little more. The members together may expand to
  `max(MIN_EXPANDED_CAP, MAX_RATIO * file size)` bytes, and each JSON member (config.json,
  metadata.json) to `MAX_JSON_BYTES`: a 1 MB file whose weights declare 1 GiB is refused, a
  large model stored as Keras stores it is not. `load_network(..., max_expanded_bytes=N)` sets
  another cap on the members together.
- Nesting. Python's JSON parser, and Keras's deserialiser after it, recurse once per level: a
  config nested 100,000 levels deep ends in a RecursionError. Real configs nest a dozen or so
  levels (a functional network behind an input contract: 14), so more than `MAX_CONFIG_DEPTH`
  is refused, counted without recursion.
"""

from __future__ import annotations

import re
import zipfile
from typing import List, Optional

import numpy as np

from dcm_keras.errors import UserError

MIN_EXPANDED_CAP = 256 * 2**20
MAX_RATIO = 20
MAX_JSON_BYTES = 32 * 2**20
MAX_CONFIG_DEPTH = 100
JSON_MEMBERS = ("config.json", "metadata.json")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def expanded_cap(file_size: int, max_expanded_bytes: Optional[int] = None) -> int:
    """What the members of a `.keras` file of `file_size` bytes may expand to together."""
    if max_expanded_bytes is not None:
        return int(max_expanded_bytes)
    return max(MIN_EXPANDED_CAP, MAX_RATIO * int(file_size))


def check_sizes(path: str, members: List[zipfile.ZipInfo], file_size: int,
                max_expanded_bytes: Optional[int] = None) -> None:
    """Refuses an archive whose members declare more than the caps (see the module docstring)."""
    for info in members:
        if info.filename in JSON_MEMBERS and info.file_size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {info.filename} expands to {_size(info.file_size)}, more "
                            f"than a model's {info.filename} needs ({_size(MAX_JSON_BYTES)} at "
                            "most); refusing to read it.")
    total = sum(info.file_size for info in members)
    cap = expanded_cap(file_size, max_expanded_bytes)
    if total > cap:
        largest = max(members, key=lambda info: info.file_size)
        raise UserError(
            f"{path} ({_size(file_size)}) expands to {_size(total)} ({largest.filename}: "
            f"{_size(largest.file_size)}), more than the {_size(cap)} allowed; refusing to read "
            "it (a zip bomb, or a model file compressed after saving: pass "
            "load_network(path, max_expanded_bytes=N) to allow N bytes for a file you trust).")


def config_depth(text: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar), without recursing."""
    bare = _STRING.sub(b'""', text)  # brackets inside strings do not count
    codes = np.frombuffer(bare, np.uint8)
    steps = (np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(codes, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(steps).max(initial=0))


def check_config_depth(path: str, text: bytes) -> None:
    """Refuses a config.json that nests deeper than `MAX_CONFIG_DEPTH` levels."""
    depth = config_depth(text)
    if depth > MAX_CONFIG_DEPTH:
        raise UserError(f"{path}: config.json nests {depth} levels deep, more than any model "
                        f"needs ({MAX_CONFIG_DEPTH} at most); refusing to parse it.")
