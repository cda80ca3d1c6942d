"""Extra model specs registered from outside :mod:`circuitscan.models` (testbeds, plugins).

:func:`circuitscan.models.load_model` resolves its own specs (SmolLM2, GPT-2 at random
init, the planted toys, local directories, GGUF files, the hub) and asks this registry
for anything else first, so a higher layer such as :mod:`circuitscan.testbeds` adds
models without ``models`` ever importing it. ``circuitscan/__init__.py`` imports the
testbeds once, which registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handle import ModelHandle

#: a loader: ``fn(key, device=...)`` with the lower-cased spec
Loader = Callable[..., "ModelHandle"]

#: spec -> one-line description, in the order ``circuitscan models`` lists them
DESCRIPTIONS: dict[str, str] = {}
_EXACT: dict[str, Loader] = {}
_PREFIXES: dict[str, Loader] = {}


def register_loader(name_or_prefix: str, fn: Loader, *, prefix: bool = False,
                    descriptions: dict[str, str] | None = None) -> None:
    """Route spec ``name_or_prefix`` (or every spec starting with it, ``prefix=True``) to ``fn``.

    ``descriptions`` (spec -> one line) are listed by ``circuitscan models``. Registering a
    name again replaces its loader (idempotent re-imports).
    """
    key = name_or_prefix.strip().lower()
    (_PREFIXES if prefix else _EXACT)[key] = fn
    DESCRIPTIONS.update(descriptions or {})


def find_loader(key: str) -> Loader | None:
    """The registered loader for lower-cased spec ``key``, or None."""
    if key in _EXACT:
        return _EXACT[key]
    for p, fn in _PREFIXES.items():
        if key.startswith(p):
            return fn
    return None
