"""The four RASP programs of tracr's library, compiled with tracr, and tracr's own forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadError

MAX_SEQ_LEN = 6
BOS, PAD = "BOS", "PAD"
FAMILY_PREFIX = "tracr-"


@dataclass(frozen=True)
class TracrProgram:
    """One RASP program of tracr's library, with the vocabulary it is compiled for."""

    name: str
    vocab: tuple[Any, ...]
    description: str
    build: Callable[[int], Any]  # max_seq_len -> rasp.SOp


def _reverse(max_seq_len: int) -> Any:
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_reverse(rasp.tokens)


def _frac_prev(max_seq_len: int) -> Any:
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_frac_prevs((rasp.tokens == "x").named("is_x"))


def _sort(max_seq_len: int) -> Any:
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=max_seq_len, min_key=1)


def _sort_freq(max_seq_len: int) -> Any:
    from tracr.compiler import lib

    return lib.make_sort_freq(max_seq_len=max_seq_len)


PROGRAMS: dict[str, TracrProgram] = {
    "reverse": TracrProgram("reverse", (1, 2, 3), "reverse the input", _reverse),
    "frac_prev": TracrProgram(
        "frac_prev",
        ("a", "b", "c", "x"),
        "fraction of tokens so far equal to 'x' (numerical output)",
        _frac_prev,
    ),
    "sort": TracrProgram("sort", (1, 2, 3, 4, 5), "sort the input", _sort),
    "sort_freq": TracrProgram(
        "sort_freq", ("a", "b", "c", "d"), "sort tokens by descending frequency", _sort_freq
    ),
}
_ALIASES = {
    "frac-prev": "frac_prev",
    "frac_prevs": "frac_prev",
    "fracprev": "frac_prev",
    "sort-freq": "sort_freq",
    "sortfreq": "sort_freq",
}


def program_name(name: str) -> str:
    """The canonical program name for ``reverse``, ``tracr-frac-prev``, ``sortfreq``..."""
    key = name.strip().lower()
    key = key[len(FAMILY_PREFIX) :] if key.startswith(FAMILY_PREFIX) else key
    key = _ALIASES.get(key, key)
    if key not in PROGRAMS:
        raise ModelLoadError(
            f"unknown tracr program {name!r}; known: {', '.join(FAMILY_PREFIX + p for p in PROGRAMS)}"
        )
    return key


def require_tracr() -> None:
    """Import tracr (and JAX) or say how to install them."""
    try:
        import tracr.compiler.compiling  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"compiling tracr models needs the optional 'tracr' extra ({exc}): "
            "pip install 'circuitscan[tracr]' (tracr-pypi, JAX on CPU)"
        ) from exc


def compile_program(name: str, max_seq_len: int = MAX_SEQ_LEN) -> Any:
    """Compile a program with tracr (seconds); returns tracr's ``AssembledTransformerModel``."""
    require_tracr()
    from tracr.compiler import compiling

    prog = PROGRAMS[program_name(name)]
    return compiling.compile_rasp_to_model(
        prog.build(max_seq_len),
        vocab=set(prog.vocab),
        max_seq_len=max_seq_len,
        compiler_bos=BOS,
        compiler_pad=PAD,
        mlp_exactness=100,
    )


def unembedding(assembled: Any) -> Any:
    """tracr's unembedding as a matrix ``[d_model, d_out]`` (its function applied to the identity)."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np

    d = len(assembled.residual_labels)

    @hk.without_apply_rng
    @hk.transform
    def unembed(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    eye = jnp.eye(d, dtype=jnp.float32)
    out = np.asarray(unembed.apply(unembed.init(jax.random.PRNGKey(0), eye), eye), dtype=np.float32)
    return out[:, None] if out.ndim == 1 else out


def tracr_forward(assembled: Any, tokens: Any) -> tuple[Any, Any]:
    """tracr's own forward pass on token ids ``[batch, seq]``: (logits [b, s, d_out], residual [b, s, d_model]).

    The logits are tracr's final residual stream times its unembedding (before the
    argmax tracr takes for categorical outputs).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    with jax.default_matmul_precision("float32"):
        out = assembled.forward(assembled.params, jnp.asarray(np.asarray(tokens), dtype=jnp.int32))
    resid = np.asarray(out.transformer_output.output, dtype=np.float32)
    return resid @ unembedding(assembled), resid
