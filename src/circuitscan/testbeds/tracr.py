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

The code lives in ``tracr_compile`` (programs, compiling), ``tracr_convert`` (the
bridge and its cache), ``tracr_model`` (reading a converted model), ``tracr_task`` (the
``tracr`` task) and ``tracr_negatives`` (Appendix G); this module re-exports them.

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

from .tracr_compile import (
    BOS,
    FAMILY_PREFIX,
    MAX_SEQ_LEN,
    PAD,
    PROGRAMS,
    TracrProgram,
    compile_program,
    program_name,
    require_tracr,
    tracr_forward,
    unembedding,
)
from .tracr_convert import FORMAT_VERSION, cache_path, convert, ensure_cached, load_tracr
from .tracr_model import (
    component_weights,
    decode,
    encode,
    ground_truth,
    is_tracr,
    token_ids,
)
from .tracr_negatives import (
    appendix_g_activations,
    appendix_g_config,
    appendix_g_discover,
    appendix_g_head_activations,
)
from .tracr_task import NEGATIVES, build_tracr_task, register_metric

__all__ = [
    "BOS", "FAMILY_PREFIX", "FORMAT_VERSION", "MAX_SEQ_LEN", "NEGATIVES", "PAD", "PROGRAMS", "TracrProgram",
    "appendix_g_activations", "appendix_g_config", "appendix_g_discover", "appendix_g_head_activations",
    "build_tracr_task", "cache_path", "compile_program", "component_weights", "convert", "decode", "encode",
    "ensure_cached", "ground_truth", "is_tracr", "load_tracr", "program_name", "register_metric", "require_tracr",
    "token_ids", "tracr_forward", "unembedding",
]
