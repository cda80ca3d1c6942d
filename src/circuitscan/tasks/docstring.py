"""Docstring completion (Heimersheim & Janiak 2023), with ACDC's generator parameters.

A prompt is a method definition and the start of its reST docstring; the model must
predict the next argument name after ``:param``::

    <BOS>
    def load(self, port, tag, data, shape, group, root):
        \"\"\"sector gap module

        :param data: tree message
        :param shape: detail mine
        :param

    -> " group"

The definition has ``n_def_prefix_args`` (2) arguments, then ``n_matching_args`` (3)
"matching" arguments, then ``n_def_suffix_args`` (1); the docstring documents
``n_doc_prefix_args`` (0) further names and then all matching arguments but the last,
which is the answer. Descriptions are ``met_desc_len`` (3) words for the method and
``arg_desc_len`` (2) per argument. These are ACDC's parameters (``acdc/docstring/utils.py``).
The wrong answers are every other name drawn for the prompt (13 with the defaults), as in
ACDC, so the docstring metric logit(answer) - max logit(wrong) can be computed.

Negatives (``negative=``), ACDC's corruptions; ``random_random`` is the default:

=================================  ==================================================
``random_random``                  the matching def arguments and the documented ones
                                   are replaced by unrelated random names
``random_doc``                     documented names replaced by random ones
``random_def``                     matching def names replaced, except the answer
``random_answer``                  the answer in the def replaced by a random name
``random_def_doc``                 ``random_def`` + ``random_doc``
``random_answer_doc``              ``random_answer`` + ``random_doc``
``vary_length_doc_desc``           description words shuffled between lines
``vary_length_doc_desc_random_doc`` that + ``random_doc``
=================================  ==================================================

Names come from ACDC's variable-name list and must be one token with a leading space;
prompt pairs are kept only at the most common token length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import keep_equal_length, require, require_tokenizer, single_token_words, word_list

NEGATIVES = (
    "random_random",
    "random_doc",
    "random_def",
    "random_answer",
    "random_def_doc",
    "random_answer_doc",
    "vary_length_doc_desc",
    "vary_length_doc_desc_random_doc",
)
STYLES = ("rest", "goog")
INDENT = "    "


def render(
    style: str,
    method: str,
    method_desc: list[str],
    def_args: list[str],
    doc_args: list[str],
    doc_descs: list[list[str]],
    *,
    defaults: bool = False,
) -> str:
    """The prompt text: a def, its docstring's description and ``:param`` lines, a last prefix."""
    args = ", ".join(a + ("=None" if defaults else "") for a in def_args)
    args_line = f"\n{INDENT}Args:" if style == "goog" else ""
    prefix = f"{INDENT}:param" if style == "rest" else f"{INDENT}   "
    lines = "\n".join(f"{prefix} {a}: {' '.join(d)}" for a, d in zip(doc_args, doc_descs, strict=True))
    return f'\ndef {method}(self, {args}):\n{INDENT}"""{" ".join(method_desc)}\n{args_line}\n{lines}\n{prefix}'


@dataclass(frozen=True)
class DocstringPrompt:
    clean: str
    corrupt: dict[str, str]
    answer: str
    wrong: tuple[str, ...]


def generate(
    rng: random.Random,
    names: list[str],
    words: list[str],
    *,
    style: str = "rest",
    n_matching_args: int = 3,
    n_def_prefix_args: int = 2,
    n_def_suffix_args: int = 1,
    n_doc_prefix_args: int = 0,
    met_desc_len: int = 3,
    arg_desc_len: int = 2,
    defaults: bool = False,
) -> DocstringPrompt:
    """One clean prompt with every corruption, answer and wrong answers (all with a leading space)."""
    m = n_matching_args
    sizes = [1, 1, m, m - 1, m - 1, m, n_def_prefix_args, n_def_suffix_args, n_doc_prefix_args]
    drawn = rng.sample(names, sum(sizes))
    parts, at = [], 0
    for s in sizes:
        parts.append(drawn[at : at + s])
        at += s
    method, rand_answer, rr_def, rr_doc, not_matching, matching, def_pre, def_suf, doc_pre = parts
    method_desc = rng.sample(words, met_desc_len)

    clean_def = def_pre + matching + def_suf
    clean_doc = doc_pre + matching[:-1]
    descs = [rng.sample(words, arg_desc_len) for _ in clean_doc]
    random_doc = doc_pre + not_matching
    random_def = def_pre + not_matching + matching[-1:] + def_suf
    random_ans = def_pre + matching[:-1] + rand_answer + def_suf
    # each line keeps its first word; the others move to random lines (same word count)
    varied: list[list[str]] = [d[:1] for d in descs]
    for d in descs:
        for w in d[1:]:
            varied[rng.randrange(len(varied))].append(w)

    def r(def_args: list[str], doc_args: list[str], doc_descs: list[list[str]] = descs) -> str:
        return render(style, method[0], method_desc, def_args, doc_args, doc_descs, defaults=defaults)

    corrupt = {
        "random_random": r(def_pre + rr_def + def_suf, doc_pre + rr_doc),
        "random_doc": r(clean_def, random_doc),
        "random_def": r(random_def, clean_doc),
        "random_answer": r(random_ans, clean_doc),
        "random_def_doc": r(random_def, random_doc),
        "random_answer_doc": r(random_ans, random_doc),
        "vary_length_doc_desc": r(clean_def, clean_doc, varied),
        "vary_length_doc_desc_random_doc": r(clean_def, random_doc, varied),
    }
    answer = matching[-1]
    wrong = tuple(" " + w for w in drawn[1:] if w != answer)
    return DocstringPrompt(clean=r(clean_def, clean_doc), corrupt=corrupt, answer=" " + answer, wrong=wrong)


def _check_args(negative: str, style: str, n_matching_args: int, n_def_prefix_args: int, n_def_suffix_args: int,
                n_doc_prefix_args: int, met_desc_len: int, arg_desc_len: int) -> None:
    if negative not in NEGATIVES:
        raise TaskError(f"docstring: unknown negative {negative!r}; valid: {', '.join(NEGATIVES)}")
    if style not in STYLES:
        raise TaskError(f"docstring: unknown style {style!r}; valid: {', '.join(STYLES)}")
    if n_matching_args < 2:
        raise TaskError(f"docstring: n_matching_args must be >= 2 (one documented, one to predict), got {n_matching_args}")
    for name, v in (("n_def_prefix_args", n_def_prefix_args), ("n_def_suffix_args", n_def_suffix_args),
                    ("n_doc_prefix_args", n_doc_prefix_args), ("met_desc_len", met_desc_len)):
        if v < 0:
            raise TaskError(f"docstring: {name} must be >= 0, got {v}")
    if arg_desc_len < 1:
        raise TaskError(f"docstring: arg_desc_len must be >= 1, got {arg_desc_len}")


def build_docstring(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    negative: str = "random_random",
    style: str = "rest",
    n_matching_args: int = 3,
    n_def_prefix_args: int = 2,
    n_def_suffix_args: int = 1,
    n_doc_prefix_args: int = 0,
    met_desc_len: int = 3,
    arg_desc_len: int = 2,
    defaults: bool = False,
) -> PromptSet:
    """``n`` docstring prompts and ``n`` paired corruptions for ``model``'s tokenizer.

    Args:
        model: the model whose tokenizer the prompts are built for.
        n: number of positive (and of negative) prompts.
        seed: seed for every random choice.
        negative: which corruption is the negative (see the module docstring).
        style: ``rest`` (``:param x:``) or ``goog`` (``Args:`` then indented names).
        n_matching_args, n_def_prefix_args, n_def_suffix_args, n_doc_prefix_args,
        met_desc_len, arg_desc_len: ACDC's generator parameters.
        defaults: write ``=None`` after every def argument.

    Returns:
        A :class:`PromptSet`; ``answers`` [n, 1], ``wrong_answers`` [n, n_wrong].
    """
    import torch

    _check_args(negative, style, n_matching_args, n_def_prefix_args, n_def_suffix_args, n_doc_prefix_args,
                met_desc_len, arg_desc_len)
    require_tokenizer(model, "docstring")
    names = single_token_words(model, word_list("docstring_args.txt"))
    words = single_token_words(model, word_list("docstring_words.txt"))
    need = 2 + 4 * n_matching_args - 2 + n_def_prefix_args + n_def_suffix_args + n_doc_prefix_args
    require(names, need, "argument names", model, "docstring")
    require(words, max(met_desc_len, arg_desc_len), "description words", model, "docstring")
    rng = random.Random(seed)
    params = dict(
        style=style,
        n_matching_args=n_matching_args,
        n_def_prefix_args=n_def_prefix_args,
        n_def_suffix_args=n_def_suffix_args,
        n_doc_prefix_args=n_doc_prefix_args,
        met_desc_len=met_desc_len,
        arg_desc_len=arg_desc_len,
        defaults=defaults,
    )
    pool = [generate(rng, names, words, **params) for _ in range(max(3 * n, 100))]
    keep, toks_pos, toks_neg, length = keep_equal_length(
        model, [p.clean for p in pool], [p.corrupt[negative] for p in pool], n, "docstring"
    )
    kept = [pool[i] for i in keep]
    answers = [[model.single_token_id(p.answer)] for p in kept]
    wrong = [[model.single_token_id(w) for w in p.wrong] for p in kept]
    return PromptSet(
        task="docstring",
        positive=torch.tensor(toks_pos),
        negative=torch.tensor(toks_neg),
        positive_text=tuple(p.clean for p in kept),
        negative_text=tuple(p.corrupt[negative] for p in kept),
        answers=torch.tensor(answers),
        wrong_answers=torch.tensor(wrong),
        metadata={
            "metric": "logit_diff",
            "negative": negative,
            "seed": seed,
            "seq_len": length,
            "n_names": len(names),
            **{k: v for k, v in params.items()},
        },
    )
