"""tracr-compiled transformers as circuitscan models (the paper's Appendix G).

Four RASP programs from tracr's library, compiled with ``max_seq_len = 6`` (METHOD.md
section 7), vocabularies as in tracr's example notebook:

============  ==================================================  ===============
program       what the model computes at every position            input vocabulary
============  ==================================================  ===============
reverse       the input reversed                                    1, 2, 3
frac_prev     fraction of tokens so far that are ``x`` (numerical)  a, b, c, x
sort          the input sorted (``make_sort``, keys made unique)    1 .. 5
sort_freq     tokens sorted by descending frequency                 a, b, c, d
============  ==================================================  ===============

Conversion. A compiled tracr model is a standard transformer without layer norm:
token and position embeddings, then per layer a bidirectional multi-head attention
(scores scaled by 1/sqrt(key_size)) and a ReLU MLP, each added to the residual stream,
and a fixed unembedding (a projection on the output space; categorical outputs take its
argmax). Each weight matrix is copied into a TL-native ``TransformerBridge``
(``attn_only=False``, ``normalization_type=None``, ``act_fn="relu"``,
``attention_dir="bidirectional"``, ``d_model`` = the residual width, not a power of
two), transposed to ``nn.Linear``'s ``[out, in]``. The unembedding is read off tracr's
own unembed function applied to the identity matrix. The converted model returns the
same logits as tracr's forward pass (tests compare them on every input of a set).

The converted weights are cached (``<cache>/testbeds/tracr-<program>-len6-v1``), so only
the first load of each model needs tracr (``pip install 'circuitscan[tracr]'``).

Token ids are tracr's input encoding (``info["token_ids"]``); every input starts with
the compiler's BOS token. Every compiled layer here has one attention head; layers
where the program needs only an MLP carry an all-zero head.

Ground truth: the heads with a non-zero weight (GROUND_TRUTH.md). Every such head here
also writes to the residual stream (W_V and W_O non-zero).

Negatives. tracr weights implement one program, so no input "switches the circuit
off". Two variants:

* :func:`appendix_g_activations` -- the paper's: activation-level negatives, made by
  running each positive input again with Gaussian noise added to the q, k and v vectors
  of heads whose W_Q, W_K, W_V are all zero and those vectors set to zero in heads
  whose weights are non-zero. Because v is zeroed in every active head and W_O is zero
  in every inactive one, every head's output on such a negative is exactly zero: the
  contrast is "head writes" vs "head silent" by construction, and scoring it recovers
  the non-zero heads (the ground truth) whenever each active head gets some code on
  positives that the all-zero output does not get.
* the task ``tracr`` (:func:`build_tracr_task`) -- honest negatives made of inputs:
  ``constant`` (one token repeated: the program runs, but its output carries nothing
  beyond that token) or ``random`` (fresh random inputs from the positives'
  distribution: a null control). With fixed-length inputs a head whose output depends
  only on the length (``reverse``'s layer-0 head, which counts tokens) writes the same
  vector on every input, so no input-level contrast can tell it from a zero head.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CircuitscanError, ModelLoadError, TaskError
from ..types import GroundTruth, HeadActivations, HeadId, HeadLayout, PromptSet

if TYPE_CHECKING:
    from torch import Tensor

    from ..methods.sae_codes import Discovery, SAECodesConfig
    from ..models.handle import ModelHandle

MAX_SEQ_LEN = 6
BOS, PAD = "BOS", "PAD"
FORMAT_VERSION = 1
FAMILY_PREFIX = "tracr-"
NEGATIVES = ("constant", "random")


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


def _np(x: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32))


def convert(
    assembled: Any, name: str, max_seq_len: int = MAX_SEQ_LEN
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A compiled tracr model as TL-native weights (plain names) and the config to boot and read them."""
    import numpy as np

    prog = PROGRAMS[program_name(name)]
    cfg = assembled.model_config
    params = assembled.params
    n_layers, n_heads, d_head = int(cfg.num_layers), int(cfg.num_heads), int(cfg.key_size)
    d_model = len(assembled.residual_labels)
    w_u = unembedding(assembled)  # [d_model, d_out]
    tok = np.asarray(params["token_embed"]["embeddings"])
    pos = np.asarray(params["pos_embed"]["embeddings"])
    weights: dict[str, Tensor] = {
        "tok_embed.weight": _np(tok),
        "pos.weight": _np(pos),
        "head.weight": _np(w_u.T),
    }
    for layer in range(n_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear")):
            weights[f"layers.{layer}.attn.{ours}.weight"] = _np(
                np.asarray(params[f"{attn}/{theirs}"]["w"]).T
            )
            weights[f"layers.{layer}.attn.{ours}.bias"] = _np(params[f"{attn}/{theirs}"]["b"])
        for ours, theirs in (("fc_in", "linear_1"), ("fc_out", "linear_2")):
            weights[f"layers.{layer}.mlp.{ours}.weight"] = _np(
                np.asarray(params[f"{mlp}/{theirs}"]["w"]).T
            )
            weights[f"layers.{layer}.mlp.{ours}.bias"] = _np(params[f"{mlp}/{theirs}"]["b"])
    tl_config = dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=int(cfg.mlp_hidden_size),
        d_vocab=int(tok.shape[0]),
        d_vocab_out=int(w_u.shape[1]),
        n_ctx=int(pos.shape[0]),
        attn_only=False,
        normalization_type=None,
        act_fn="relu",
        attention_dir="causal" if cfg.causal else "bidirectional",
        positional_embedding_type="standard",
        seed=0,
    )
    encoding = assembled.input_encoder.encoding_map
    categorical = hasattr(assembled.output_encoder, "encoding_map")
    outputs = (
        sorted(assembled.output_encoder.encoding_map.items(), key=lambda kv: kv[1])
        if categorical
        else []
    )
    try:
        from importlib.metadata import version

        tracr_version = version("tracr-pypi")
    except Exception:  # pragma: no cover - tracr installed another way
        tracr_version = "unknown"
    config = {
        "tl_config": tl_config,
        "testbed": FAMILY_PREFIX + prog.name,
        "program": prog.name,
        "description": prog.description,
        "max_seq_len": max_seq_len,
        "vocab": list(prog.vocab),
        "token_ids": [
            [value, int(i)] for value, i in sorted(encoding.items(), key=lambda kv: kv[1])
        ],
        "bos": BOS,
        "pad": PAD,
        "categorical_output": categorical,
        "output_values": [value for value, _ in outputs],
        "residual_labels": list(assembled.residual_labels),
        "format_version": FORMAT_VERSION,
        "tracr_version": tracr_version,
    }
    return weights, config


def cache_path(name: str, max_seq_len: int = MAX_SEQ_LEN) -> Path:
    from ._native import testbed_cache

    return (
        testbed_cache() / f"{FAMILY_PREFIX}{program_name(name)}-len{max_seq_len}-v{FORMAT_VERSION}"
    )


def ensure_cached(name: str, max_seq_len: int = MAX_SEQ_LEN, *, assembled: Any = None) -> Path:
    """The cached conversion of a program, compiling it first if needed."""
    from ._native import save_files, write_cached

    path = cache_path(name, max_seq_len)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    from ..progress import status

    with status(f"compiling tracr program {program_name(name)!r} once (cached in {path})"):
        compiled = assembled if assembled is not None else compile_program(name, max_seq_len)
        weights, config = convert(compiled, name, max_seq_len)
    return write_cached(path, lambda tmp: save_files(tmp, weights, config))


def load_tracr(
    name: str, *, device: str = "cpu", max_seq_len: int = MAX_SEQ_LEN, assembled: Any = None
) -> ModelHandle:
    """A tracr program as a :class:`ModelHandle` (family ``tracr-<program>``, no tokenizer).

    Args:
        name: ``reverse``, ``frac_prev``, ``sort`` or ``sort_freq`` (``tracr-`` prefix allowed).
        device: torch device.
        max_seq_len: tokens after BOS the model is compiled for.
        assembled: an already compiled tracr model of this program (skips compiling when
            the cache is cold).
    """
    from ..models.handle import ModelHandle
    from ._native import boot, read_cached, set_weights

    prog = program_name(name)
    path = ensure_cached(prog, max_seq_len, assembled=assembled)
    cached = read_cached(path)
    if cached is None:  # pragma: no cover - removed between the two calls
        raise ModelLoadError(
            f"the cached tracr model {path} disappeared while loading; load it again"
        )
    weights, config = cached
    bridge = boot(config["tl_config"])
    set_weights(bridge, weights, what=f"tracr model {path}")
    if str(device) != "cpu":
        bridge.to(device)
    layout = HeadLayout(int(config["tl_config"]["n_layers"]), int(config["tl_config"]["n_heads"]))
    handle = ModelHandle(
        bridge=bridge,
        spec=FAMILY_PREFIX + prog,
        family=FAMILY_PREFIX + prog,
        layout=layout,
        tokenizer=None,
        prepend_bos=False,  # inputs carry the compiler's BOS token themselves
        info={
            k: config[k]
            for k in (
                "program",
                "max_seq_len",
                "vocab",
                "token_ids",
                "bos",
                "pad",
                "categorical_output",
                "output_values",
                "tracr_version",
            )
        },
    )
    handle.info["path"] = str(path)
    handle.info["ground_truth"] = sorted(h.name for h in weight_heads(handle))
    return handle


# --------------------------------------------------------------------------- reading a converted model


def is_tracr(model: ModelHandle) -> bool:
    return model.family.startswith(FAMILY_PREFIX) and "token_ids" in model.info


def _require(model: ModelHandle, what: str) -> None:
    if not is_tracr(model):
        raise TaskError(
            f"{what} runs only on tracr models (tracr-reverse, ...), not {model.spec!r}"
        )


def token_ids(model: ModelHandle) -> dict[Any, int]:
    _require(model, "tracr token encoding")
    return {value: int(i) for value, i in model.info["token_ids"]}


def encode(model: ModelHandle, inputs: Sequence[Sequence[Any]]) -> Tensor:
    """Input sequences (values, without BOS) as token ids ``[n, 1 + len]`` with BOS in front."""
    import torch

    ids = token_ids(model)
    bos = ids[model.info["bos"]]
    rows = []
    for seq in inputs:
        unknown = [v for v in seq if v not in ids or v in (model.info["bos"], model.info["pad"])]
        if unknown:
            raise CircuitscanError(
                f"{model.spec}: input value {unknown[0]!r} is not in the vocabulary {model.info['vocab']}"
            )
        rows.append([bos, *(ids[v] for v in seq)])
    if len({len(r) for r in rows}) > 1:
        raise CircuitscanError(f"{model.spec}: inputs of one batch must have the same length")
    return torch.tensor(rows, dtype=torch.long)


def decode(model: ModelHandle, logits: Tensor) -> list[list[Any]]:
    """Outputs per position from logits ``[n, seq, d_out]`` (argmax for categorical, the value otherwise).

    Position 0 (BOS) is included, as in tracr's ``decoded`` (which overwrites it with BOS).
    """
    _require(model, "decoding tracr outputs")
    if model.info["categorical_output"]:
        values = model.info["output_values"]
        return [[values[i] for i in row] for row in logits.argmax(-1).tolist()]
    return logits[..., 0].tolist()


def weight_heads(model: ModelHandle, tol: float = 0.0) -> list[HeadId]:
    """Heads with any non-zero weight or bias (W_Q, W_K, W_V, W_O), in layer order."""
    return [h for h, parts in component_weights(model, tol).items() if any(parts.values())]


def component_weights(model: ModelHandle, tol: float = 0.0) -> dict[HeadId, dict[str, bool]]:
    """Per head: does its q, k, v, o weight (or bias) have an entry with ``|w| > tol``?"""
    b = model.bridge
    layout = model.layout
    out: dict[HeadId, dict[str, bool]] = {}
    mats = {"q": (b.W_Q, b.b_Q), "k": (b.W_K, b.b_K), "v": (b.W_V, b.b_V), "o": (b.W_O, None)}
    for layer in range(layout.n_layers):
        for h in range(layout.n_heads):
            parts = {}
            for kind, (w, bias) in mats.items():
                nz = bool((w[layer, h].detach().abs() > tol).any())
                if bias is not None:
                    nz = nz or bool((bias[layer, h].detach().abs() > tol).any())
                parts[kind] = nz
            out[HeadId(layer, h)] = parts
    return out


def ground_truth(model: ModelHandle) -> GroundTruth:
    """The heads with non-zero weights of a tracr model (GROUND_TRUTH.md)."""
    _require(model, "the tracr ground truth")
    heads = weight_heads(model)
    if not heads or len(heads) == model.layout.n_total:
        raise CircuitscanError(
            f"{model.spec}: {len(heads)} of {model.layout.n_total} heads have weights; no ROC possible"
        )
    return GroundTruth(
        name=model.family,
        model=model.family,
        heads=frozenset(heads),
        classes={"non-zero weights": tuple(heads)},
        source="tracr-compiled weights (circuitscan.testbeds.tracr): heads with a non-zero W_Q, W_K, W_V or W_O",
    )


# --------------------------------------------------------------------------- the input-level task


def _draw(rng: random.Random, vocab: Sequence[Any], length: int) -> list[Any]:
    return [rng.choice(list(vocab)) for _ in range(length)]


def build_tracr_task(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    negative: str = "constant",
    length: int | None = None,
) -> PromptSet:
    """Inputs of a tracr program (positives) and input-level negatives.

    Args:
        model: a tracr model (``tracr-reverse``, ...).
        n: positives (and as many negatives); each is BOS plus ``length`` tokens drawn
            uniformly with replacement from the program's vocabulary (the paper's
            "permutations with replacement").
        seed: seed of the draws.
        negative: ``constant`` (BOS plus one random token repeated) or ``random``
            (fresh random inputs from the positives' distribution: a null control).
        length: tokens after BOS (default: the compiled ``max_seq_len``).

    Returns:
        A :class:`PromptSet` whose metric is ``tracr_error`` (the distance of the outputs
        from the clean model's, see :func:`register_metric`).
    """
    import torch

    _require(model, "task 'tracr'")
    if negative not in NEGATIVES:
        raise TaskError(f"tracr: negative must be one of {', '.join(NEGATIVES)}, got {negative!r}")
    max_len = int(model.info["max_seq_len"])
    length = max_len if length is None else int(length)
    if not 1 <= length <= max_len:
        raise TaskError(f"tracr: length must lie in 1..{max_len} for {model.spec}, got {length}")
    vocab = list(model.info["vocab"])
    rng = random.Random(seed)
    pos_in = [_draw(rng, vocab, length) for _ in range(n)]
    if negative == "constant":
        neg_in = [[rng.choice(vocab)] * length for _ in range(n)]
    else:
        neg_in = [_draw(rng, vocab, length) for _ in range(n)]
    pos, neg = encode(model, pos_in), encode(model, neg_in)
    with torch.inference_mode():
        clean = model.bridge(pos)
    targets = clean.argmax(-1) if model.info["categorical_output"] else clean[..., 0].float()
    return PromptSet(
        task="tracr",
        positive=pos,
        negative=neg,
        positive_text=tuple(" ".join(map(str, s)) for s in pos_in),
        negative_text=tuple(" ".join(map(str, s)) for s in neg_in),
        metadata={
            "metric": "tracr_error",
            "program": model.info["program"],
            "negative": negative,
            "seed": seed,
            "length": length,
            "seq_len": length + 1,
            "targets": targets,
            "categorical_output": bool(model.info["categorical_output"]),
        },
    )


def _tracr_error(logits: Tensor, batch: Any) -> Tensor:
    """Per example: cross-entropy of the clean output class (categorical) or squared error (numerical).

    Averaged over positions 1.. (position 0 is BOS, whose output tracr ignores).
    """
    meta = batch.prompts.metadata
    targets = meta["targets"][batch.index.cpu()][:, batch.positions.cpu()].to(logits.device)
    keep = batch.positions.to(logits.device) > 0
    if meta["categorical_output"]:
        logp = logits.float().log_softmax(-1)
        err = -logp.gather(-1, targets[..., None].long())[..., 0]
    else:
        err = (logits[..., 0].float() - targets.float()) ** 2
    return err[:, keep].mean(-1)


def register_metric() -> None:
    """Register ``tracr_error`` with :mod:`circuitscan.evaluation.metrics` (idempotent)."""
    from ..evaluation.metrics import METRICS, Metric
    from ..evaluation.metrics import register_metric as _register

    if "tracr_error" in METRICS:
        return
    _register(
        Metric(
            "tracr_error",
            "tracr outputs vs the clean model's: cross-entropy of its output class (categorical) or squared "
            "error (numerical), mean over positions after BOS",
            _tracr_error,
            positions="all",
            higher_is_better=False,
            # a distance from the clean model's outputs: like KL, it is minimal (its gradient
            # vanishes) at the clean model, which tells gradient methods (EAP, HISP) to take
            # their gradient at the ablated point; the clean log-probs it makes the evaluator
            # keep are not read
            needs_reference=True,
            requires=("metadata.targets",),
        ),
        table=("tracr_error",),
    )


# --------------------------------------------------------------------------- Appendix G negatives


def appendix_g_activations(
    model: ModelHandle,
    tokens: Tensor,
    *,
    edit: bool,
    sigma: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """Per-head outputs (mean over positions) ``[n, n_heads_total, d_model]``, optionally Appendix-G edited.

    With ``edit``, each head's q, k and v vectors are replaced while the model runs: a
    component whose weight matrix (and bias) is all zero gets Gaussian noise of standard
    deviation ``sigma`` added; a component with a non-zero weight is set to zero.
    Without ``edit`` this is :func:`circuitscan.activations.head_outputs` on ``tokens``.
    """
    import torch

    if sigma < 0:
        raise CircuitscanError(f"sigma must be >= 0, got {sigma}")
    layout = model.layout
    n_heads = layout.n_heads
    parts = component_weights(model)
    zero_w = {
        kind: torch.tensor(
            [
                [not parts[HeadId(layer, h)][kind] for h in range(n_heads)]
                for layer in range(layout.n_layers)
            ]
        )
        for kind in ("q", "k", "v")
    }
    w_o = model.bridge.W_O.detach()  # [L, H, d_head, d_model]
    n = tokens.shape[0]
    out = torch.empty(n, layout.n_total, model.d_model)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, int] = {}

    def editor(kind: str, layer: int):
        def hook(x: Tensor, hook) -> Tensor:  # x: [b, pos, H, d_head]
            zero = zero_w[kind][layer][None, None, :, None].to(x.device)
            noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype) * sigma
            return torch.where(zero, x + noise, torch.zeros_like(x))

        return hook

    def capture(layer: int):
        def hook(z: Tensor, hook) -> Tensor:
            zz = z if z.ndim == 4 else z.reshape(z.shape[0], z.shape[1], n_heads, -1)
            res = torch.einsum("bhd,hdm->bhm", zz.mean(1).to(w_o.dtype), w_o[layer])
            out[state["lo"] : state["hi"], layer * n_heads : (layer + 1) * n_heads] = res.float()
            return z

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", capture(layer)) for layer in range(layout.n_layers)]
    if edit:
        hooks = [
            (f"blocks.{layer}.attn.hook_{kind}", editor(kind, layer))
            for layer in range(layout.n_layers)
            for kind in ("q", "k", "v")
        ] + hooks
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            state["lo"], state["hi"] = lo, min(n, lo + batch_size)
            model.bridge.run_with_hooks(tokens[lo : lo + batch_size], fwd_hooks=hooks)
    return out


def appendix_g_head_activations(
    model: ModelHandle, n: int = 250, *, seed: int = 0, sigma: float = 1.0, batch_size: int = 64
) -> HeadActivations:
    """Appendix G's data: ``n`` random inputs (positives) and the same inputs run edited (negatives)."""
    import torch

    prompts = build_tracr_task(model, n, seed=seed, negative="random")
    pos = appendix_g_activations(model, prompts.positive, edit=False, batch_size=batch_size)
    neg = appendix_g_activations(
        model, prompts.positive, edit=True, sigma=sigma, seed=seed, batch_size=batch_size
    )
    labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return HeadActivations(
        x=torch.cat([pos, neg]), labels=labels, layout=model.layout, aggregation="mean"
    )


def appendix_g_config(seed: int = 0) -> SAECodesConfig:
    """The paper's Appendix G protocol: SAE trained on 10 examples drawn at random from the
    pooled positives and negatives, codes counted on all examples."""
    from ..config import SAEConfig, ScoringConfig
    from ..methods.sae_codes import SAECodesConfig

    return SAECodesConfig(
        sae=SAEConfig(balanced=False, seed=seed), scoring=ScoringConfig(count_on="all")
    )


def appendix_g_discover(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    sigma: float = 1.0,
    cfg: SAECodesConfig | None = None,
) -> Discovery:
    """sae-codes on Appendix G's activation-level negatives (default: :func:`appendix_g_config`)."""
    from ..methods.sae_codes import discover_from_activations

    acts = appendix_g_head_activations(model, n, seed=seed, sigma=sigma)
    return discover_from_activations(acts, cfg or appendix_g_config(seed), paired=True)
