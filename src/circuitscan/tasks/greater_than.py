"""Greater-than (Hanna et al. 2023), as the paper uses it (METHOD.md section 1, Appendix D.1).

Positive: "The {noun} lasted from the year {XX}{YY} to the year {XX}"; the model should
put its probability on two-digit continuations YY' > YY. Centuries XX are drawn from
12..18 and YY from 02..98, balanced (YY cycles through a shuffled 02..98, so every value
appears equally often, give or take one); nouns are Hanna et al.'s duration nouns that
are one token for the tokenizer.

Negatives (``negative=``):

===============  ==========================================================================
``range``        (default) the end century is the preceding one: "... 1523 to the year 14"
``year``         Hanna et al.'s corruption: the start year ends in 01: "... 1501 to the year 15"
``random``       YY replaced by two random uppercase letters: "... 15QK to the year 15"
``unrelated``    "I've got a lovely bunch of {noun}" (left-padded to the prompt length, masked)
``copy``         another positive with a different century and YY (same noun)
===============  ==========================================================================

Reading P(YY') depends on the tokenizer; ``metadata["year_reading"]`` says which applies:

``"single-token"`` (GPT-2: " 1732" -> " 17" + "32")
    Only years whose " XXYY" splits as " XX" + "YY" are used (frequent years such as
    " 1800" that are one token are excluded). P(YY') is the next-token probability at the
    last position of the token for "YY'"; ``metadata["yy_token_ids"]`` lists the ids of
    "00".."99" in order.

``"two-digit"`` (SmolLM2, Llama: every digit is its own token)
    The continuation YY' is two tokens, so P(YY') = P(d1 | prompt) * P(d2 | prompt, d1),
    both full-vocabulary softmax probabilities; ``metadata["eval_suffix_ids"]`` lists the
    ids of the digits "0".."9". Probabilities over the 100 continuations need not sum to 1
    (the model may continue with something else).

:func:`greater_than_year_probs` computes the [n, 100] table for either reading from a
caller-supplied ``logits_fn``; :func:`probability_difference` and
:func:`cutoff_sharpness` turn it into the paper's metrics (METHOD.md section 7).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import (
    keep_equal_length,
    left_pad,
    pad_id,
    require,
    require_tokenizer,
    single_token_words,
    word_list,
)

if TYPE_CHECKING:
    import torch

TEMPLATE = "The {noun} lasted from the year {start} to the year {century}"
UNRELATED_TEMPLATE = "I've got a lovely bunch of {noun}"
NEGATIVES = ("range", "year", "random", "unrelated", "copy")
READINGS = ("single-token", "two-digit")
YY_RANGE = range(2, 99)  # 02..98: at least one correct and one wrong two-digit answer


def _encode(model: ModelHandle, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


def year_reading(model: ModelHandle) -> tuple[str, list[int]]:
    """How P(YY') is read for this tokenizer: (reading, ids).

    ``("single-token", ids of "00".."99")`` or ``("two-digit", ids of "0".."9")``; a
    :class:`TaskError` if neither fits.
    """
    require_tokenizer(model, "greater-than")
    two = [model.single_token_id(f"{y:02d}") for y in range(100)]
    # the split must hold in context: " XXYY" -> " XX" + "YY"
    if all(t is not None for t in two) and _encode(model, " 1732") == _encode(model, " 17") + [two[32]]:
        return "single-token", [int(t) for t in two]
    digits = [model.single_token_id(str(d)) for d in range(10)]
    if all(t is not None for t in digits) and _encode(model, " 1732") == _encode(model, " 17") + [
        digits[3],
        digits[2],
    ]:
        return "two-digit", [int(t) for t in digits]
    raise TaskError(
        f"task 'greater-than' cannot be built for model {model.spec!r}: its tokenizer splits "
        f"' 1732' as {_encode(model, ' 1732')}, which is neither ' 17' + one token for '32' (GPT-2) "
        "nor ' 17' followed by one token per digit (SmolLM2, Llama)"
    )


def _continuation(reading: str, ids: list[int], yy: int) -> list[int]:
    return [ids[yy]] if reading == "single-token" else [ids[yy // 10], ids[yy % 10]]


def _valid_years(model: ModelHandle, reading: str, ids: list[int], centuries: range) -> dict[int, list[int]]:
    """For each YY in 02..98, the centuries XX whose " XXYY" tokenises as " XX" + YY."""
    valid: dict[int, list[int]] = {yy: [] for yy in YY_RANGE}
    for xx in centuries:
        head = _encode(model, f" {xx}")
        for yy in YY_RANGE:
            if _encode(model, f" {xx}{yy:02d}") == head + _continuation(reading, ids, yy):
                valid[yy].append(xx)
    return valid


def _check_reading_in_context(model: ModelHandle, reading: str, ids: list[int], prompt: str) -> None:
    """The prompt must end where the year's continuation starts.

    With single-token years some continuations re-merge with the century (GPT-2 writes
    " 1800" as one token); the model's P("00") is still read, as in Hanna et al., so only
    most continuations, not all, must split cleanly.
    """
    base = _encode(model, prompt)
    clean = [yy for yy in range(100) if _encode(model, f"{prompt}{yy:02d}") == base + _continuation(reading, ids, yy)]
    if len(clean) < (100 if reading == "two-digit" else 50):
        raise TaskError(
            f"task 'greater-than' cannot be built for model {model.spec!r}: after {prompt!r}, only "
            f"{len(clean)} of the 100 two-digit continuations tokenise as the prompt followed by "
            f"{'one token' if reading == 'single-token' else 'one token per digit'}"
        )


def _usable_years(model: ModelHandle, reading: str, ids: list[int], lo: int, hi: int,
                  negative: str) -> tuple[dict[int, list[int]], list[int]]:
    """The centuries valid for each start year YY, and the start years with at least one."""
    valid = _valid_years(model, reading, ids, range(lo, hi + 1))
    if negative == "year":  # the corrupted start year XX01 must split like the others
        ok01 = {xx for xx in range(lo, hi + 1) if _encode(model, f" {xx}01") == _encode(model, f" {xx}") + _continuation(reading, ids, 1)}
        valid = {yy: [xx for xx in v if xx in ok01] for yy, v in valid.items()}
    usable = [yy for yy in YY_RANGE if valid[yy]]
    if not usable:
        raise TaskError(
            f"task 'greater-than' cannot be built for model {model.spec!r}: no year {lo}02..{hi}98 "
            "tokenises as the century followed by its two-digit part"
        )
    return valid, usable


def _negative_prompt(model: ModelHandle, negative: str, rng: random.Random, noun: str, xx: int, yy: int, pos: str,
                     valid: dict[int, list[int]], usable: list[int]) -> str | None:
    """The corrupted partner of ``pos`` (None: a ``copy`` negative has no other year to use)."""
    if negative == "range":
        return TEMPLATE.format(noun=noun, start=f"{xx}{yy:02d}", century=xx - 1)
    if negative == "year":
        return TEMPLATE.format(noun=noun, start=f"{xx}01", century=xx)
    if negative == "random":
        letters = string.ascii_uppercase
        n_pos = len(_encode(model, pos))
        for _ in range(50):  # letter pairs that keep the token count
            neg = TEMPLATE.format(noun=noun, start=f"{xx}{rng.choice(letters)}{rng.choice(letters)}", century=xx)
            if len(_encode(model, neg)) == n_pos:
                break
        return neg
    if negative == "unrelated":
        return UNRELATED_TEMPLATE.format(noun=noun)
    # copy: same form, another century and start year
    others = [y for y in usable if y != yy and any(x != xx for x in valid[y])]
    if not others:
        return None
    yy2 = rng.choice(others)
    xx2 = rng.choice([x for x in valid[yy2] if x != xx])
    return TEMPLATE.format(noun=noun, start=f"{xx2}{yy2:02d}", century=xx2)


def _prompt_pool(model: ModelHandle, n: int, seed: int, negative: str, nouns: list[str],
                 valid: dict[int, list[int]], usable: list[int]) -> list[tuple[str, str, int, int]]:
    """(positive, negative, yy, century) candidates, more than ``n`` (some are dropped for length)."""
    rng = random.Random(seed)
    pool: list[tuple[str, str, int, int]] = []
    size = n + max(n // 2, 50)
    while len(pool) < size:
        block = list(usable)
        rng.shuffle(block)
        for yy in block:
            xx = rng.choice(valid[yy])
            noun = rng.choice(nouns)
            pos = TEMPLATE.format(noun=noun, start=f"{xx}{yy:02d}", century=xx)
            neg = _negative_prompt(model, negative, rng, noun, xx, yy, pos, valid, usable)
            if neg is not None:
                pool.append((pos, neg, yy, xx))
    return pool


def build_greater_than(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    negative: str = "range",
    centuries: tuple[int, int] = (12, 18),
) -> PromptSet:
    """``n`` greater-than prompts and ``n`` paired negatives for ``model``'s tokenizer.

    Args:
        model: the model whose tokenizer the prompts are built for.
        n: number of positive (and of negative) prompts.
        seed: seed for every random choice.
        negative: ``range`` (default), ``year``, ``random``, ``unrelated`` or ``copy``.
        centuries: first and last century XX (inclusive); the paper uses 12..18.

    Returns:
        A :class:`PromptSet` whose metadata holds ``yy`` (start years), ``century``,
        ``year_reading`` and the token ids needed to read P(YY') (see the module docstring).
    """
    import torch

    if negative not in NEGATIVES:
        raise TaskError(f"greater-than: unknown negative type {negative!r}; valid: {', '.join(NEGATIVES)}")
    lo, hi = (int(c) for c in centuries)
    if not 11 <= lo <= hi <= 99 or (negative == "copy" and lo == hi):
        raise TaskError(
            f"greater-than: centuries must be two first digits lo..hi with 11 <= lo <= hi <= 99 "
            f"(two different ones for negative='copy'), got {centuries}"
        )
    require_tokenizer(model, "greater-than")
    reading, ids = year_reading(model)
    nouns = single_token_words(model, word_list("greater_than_nouns.txt"))
    require(nouns, 1, "duration nouns", model, "greater-than")
    valid, usable = _usable_years(model, reading, ids, lo, hi, negative)
    _check_reading_in_context(model, reading, ids, TEMPLATE.format(noun=nouns[0], start=f"{lo}32", century=lo))
    pool = _prompt_pool(model, n, seed, negative, nouns, valid, usable)
    keep, toks_pos, toks_neg, length = keep_equal_length(
        model,
        [p[0] for p in pool],
        [p[1] for p in pool],
        n,
        "greater-than",
        negatives_may_differ=negative == "unrelated",
    )
    positive = torch.tensor(toks_pos)
    negative_mask = None
    if negative == "unrelated":
        if any(len(t) > length for t in toks_neg):
            raise TaskError(f"greater-than: an unrelated negative is longer than the prompts ({length} tokens)")
        neg_tokens, negative_mask = left_pad(toks_neg, length, pad_id(model))
    else:
        neg_tokens = torch.tensor(toks_neg)
    meta: dict[str, Any] = {
        "metric": "prob_diff",
        "negative": negative,
        "seed": seed,
        "seq_len": length,
        "yy": [pool[i][2] for i in keep],
        "century": [pool[i][3] for i in keep],
        "year_reading": reading,
        "answer_rule": "answers of prompt i: two-digit years YY' > yy[i]; wrong answers: YY' <= yy[i]",
        "n_nouns": len(nouns),
    }
    if reading == "single-token":
        meta["yy_token_ids"] = ids
    else:
        meta["eval_suffix_ids"] = ids
    return PromptSet(
        task="greater-than",
        positive=positive,
        negative=neg_tokens,
        positive_text=tuple(pool[i][0] for i in keep),
        negative_text=tuple(pool[i][1] for i in keep),
        negative_mask=negative_mask,
        metadata=meta,
    )


def greater_than_year_probs(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    prompts: PromptSet,
    *,
    tokens: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """P(YY') for YY' = 00..99 after each prompt: a [n, 100] tensor.

    Args:
        logits_fn: ``tokens [n', seq'] -> logits [n', seq', vocab]``; the caller's model,
            with whatever intervention it applies.
        prompts: a greater-than :class:`PromptSet` (its metadata says how to read years).
        tokens: the prompts to read (default: ``prompts.positive``); no left padding.
        batch_size: prompts per call of ``logits_fn`` (default 64, or 8 for two-digit).

    Returns:
        ``probs[i, y]`` = P(the model continues prompt i with the two-digit year y).

    For the ``"single-token"`` reading this is the softmax at the last position, at the
    ids of "00".."99". For ``"two-digit"``, each chunk of ``b`` prompts is sent to
    ``logits_fn`` once, as ``b * 10`` rows (row ``10 * i + d``: prompt i followed by the
    digit d), one token longer than the prompts; the second-to-last position gives
    P(d1 | prompt) and the last P(d2 | prompt, d1), so P(YY') = P(d1) * P(d2 | d1).
    """
    import torch

    meta = prompts.metadata
    reading = meta.get("year_reading")
    if reading not in READINGS:
        raise TaskError(
            f"task {prompts.task!r} is not a greater-than prompt set (metadata 'year_reading' is "
            f"{reading!r}, expected one of {', '.join(READINGS)})"
        )
    toks = prompts.positive if tokens is None else tokens
    n = int(toks.shape[0])
    out = []
    if reading == "single-token":
        ids = torch.tensor(meta["yy_token_ids"])
        step = batch_size or 64
        for lo in range(0, n, step):
            logits = logits_fn(toks[lo : lo + step])
            out.append(torch.softmax(logits[:, -1].double(), -1)[:, ids])
    else:
        digits = torch.tensor(meta["eval_suffix_ids"])
        step = batch_size or 8
        for lo in range(0, n, step):
            chunk = toks[lo : lo + step]
            b = int(chunk.shape[0])
            ext = torch.cat([chunk.repeat_interleave(10, 0), digits.repeat(b)[:, None].to(chunk.dtype)], 1)
            logp = torch.log_softmax(logits_fn(ext)[:, -2:].double(), -1)
            first = logp[0::10, 0][:, digits]  # [b, 10]: P(d1 | prompt)
            second = logp[:, 1][:, digits].reshape(b, 10, 10)  # [b, d1, d2]: P(d2 | prompt, d1)
            out.append((first[:, :, None] + second).exp().reshape(b, 100))
    return torch.cat(out).float()


def _yy_tensor(yy: Any, n: int) -> torch.Tensor:
    import torch

    t = torch.as_tensor(yy, dtype=torch.long).reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"need one start year per prompt: {t.shape[0]} years for {n} prompts")
    return t


def probability_difference(year_probs: torch.Tensor, yy: Any) -> torch.Tensor:
    """Hanna et al.'s PD per prompt: sum of p over YY' > yy minus sum over YY' <= yy.

    The one definition: the ``prob_diff`` metric (``evaluation.metrics.greater_than_prob_diff``)
    is this function. ``year_probs[i, y]`` need not sum to 1 over the 100 years.
    """
    import torch

    y = _yy_tensor(yy, int(year_probs.shape[0])).to(year_probs.device)
    above = torch.arange(year_probs.shape[-1], device=year_probs.device)[None, :] > y[:, None]
    return (year_probs * above).sum(-1) - (year_probs * ~above).sum(-1)


def cutoff_sharpness(year_probs: torch.Tensor, yy: Any) -> torch.Tensor:
    """Hanna et al.'s CS per prompt: p(yy + 1) - p(yy - 1) (0 beyond 00..99).

    The one definition: the ``cutoff_sharpness`` metric of ``evaluation.metrics`` is this function.
    """
    import torch

    y = _yy_tensor(yy, int(year_probs.shape[0])).to(year_probs.device)
    padded = torch.nn.functional.pad(year_probs, (1, 1))  # index y + 1 is year y
    rows = torch.arange(len(y), device=year_probs.device)
    return padded[rows, y + 2] - padded[rows, y]
