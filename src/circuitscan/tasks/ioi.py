"""Indirect object identification, the paper's flavour (METHOD.md section 1).

Positive: "When Elon and Sam finished their meeting, Elon gave the model to" -> " Sam".
Negative: the same prompt with the repeated subject replaced by a third name, so that
no name is "the other one" ("..., Andrej gave the model to").

Prompts come from several templates in the style of Wang et al. (2022). Names, places
and objects are kept only if they are single tokens (with a leading space) for the
model's tokenizer; after filling, only prompts of the most common token length are
kept, so every prompt of the set has the same length. Each negative differs from its
positive in exactly one token (the second subject).
"""

from __future__ import annotations

import random

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import modal_length, require, single_token_words, word_list

# [A] = indirect object (answer), [B] = subject (repeated), [C] = third name (negative)
TEMPLATES = (
    "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "After [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "Friends [A] and [B] found a [OBJECT] at the [PLACE]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
)


def _fill(template: str, a: str, b: str, place: str, obj: str) -> str:
    return template.replace("[A]", a).replace("[B]", b).replace("[PLACE]", place).replace("[OBJECT]", obj)


def build_ioi(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    templates: tuple[str, ...] = TEMPLATES,
) -> PromptSet:
    """``n`` positive and ``n`` paired negative IOI prompts for ``model``'s tokenizer."""
    import torch

    if n < 1:
        raise TaskError(f"ioi needs n >= 1 prompts, got {n}")
    names = single_token_words(model, word_list("names.txt"))
    places = single_token_words(model, word_list("places.txt"))
    objects = single_token_words(model, word_list("objects.txt"))
    require(names, 3, "names", model, "ioi")
    require(places, 1, "places", model, "ioi")
    require(objects, 1, "objects", model, "ioi")
    rng = random.Random(seed)
    # draw a pool, then keep the most common token length
    pool = []
    for _ in range(max(4 * n, 200)):
        t = rng.choice(templates)
        a, b, c = rng.sample(names, 3)
        place, obj = rng.choice(places), rng.choice(objects)
        pos = _fill(t, a, b, place, obj)
        first_b = pos.index(b)
        # replace only the SECOND subject: split at the first occurrence of B
        second = pos.index(b, first_b + len(b))
        neg = pos[:second] + c + pos[second + len(b) :]
        pool.append((pos, neg, a, b))
    toks_pos = model.to_tokens([p for p, _, _, _ in pool])
    toks_neg = model.to_tokens([q for _, q, _, _ in pool])
    length = modal_length([len(t) for t in toks_pos])
    keep = [i for i in range(len(pool)) if len(toks_pos[i]) == length and len(toks_neg[i]) == length]
    if len(keep) < n:
        raise TaskError(
            f"ioi: only {len(keep)} prompts of equal token length ({length}) could be made for "
            f"model {model.spec!r}; ask for fewer (n={n})"
        )
    keep = keep[:n]
    answers = [model.single_token_id(" " + pool[i][2]) for i in keep]
    wrong = [model.single_token_id(" " + pool[i][3]) for i in keep]
    return PromptSet(
        task="ioi",
        positive=torch.tensor([toks_pos[i] for i in keep]),
        negative=torch.tensor([toks_neg[i] for i in keep]),
        positive_text=tuple(pool[i][0] for i in keep),
        negative_text=tuple(pool[i][1] for i in keep),
        answers=torch.tensor(answers)[:, None],
        wrong_answers=torch.tensor(wrong)[:, None],
        metadata={"flavour": "oneill-bui", "seed": seed, "seq_len": length, "n_names": len(names)},
    )
