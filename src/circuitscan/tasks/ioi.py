"""Indirect object identification, in two flavours.

``flavour="oneill-bui"`` (the paper, METHOD.md section 1; task name ``ioi``)
    Positive: "When Elon and Sam finished their meeting, Elon gave the model to" -> " Sam".
    Negative: the same prompt with the repeated subject replaced by a third name, so no
    name is "the other one" ("..., Andrej gave the model to"). Prompts come from several
    templates in the style of Wang et al. (2022). Each negative differs from its positive
    in exactly one token (the second subject).

``flavour="acdc"`` (Conmy et al. 2023; task name ``ioi-acdc``)
    One template, "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to", answer
    " [A]". The corrupted prompt replaces all three names (IO, S1, S2) by three fresh,
    distinct random names (ACDC's "ABC" dataset), so it differs in exactly three tokens.

In both, the answer is the indirect object (IO, ``answers[:, 0]``) and the wrong answer the
subject (S, ``wrong_answers[:, 0]``), for logit differences logit(IO) - logit(S). Names,
places and objects are kept only if they are single tokens (with a leading space) for the
model's tokenizer; only prompt pairs of the most common token length are kept.
"""

from __future__ import annotations

import random

from ..errors import TaskError
from ..models.handle import ModelHandle
from ..types import PromptSet
from .base import (
    keep_equal_length,
    require,
    require_tokenizer,
    single_token_words,
    word_list,
)

# [A] = indirect object (answer), [B] = subject; its LAST occurrence is the repeated subject
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
ACDC_TEMPLATE = "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"
FLAVOURS = ("oneill-bui", "acdc")


def _fill(template: str, a: str, b: str, place: str, obj: str, *, s2: str | None = None) -> str:
    """Fill a template; ``s2`` replaces only the last (repeated) subject."""
    head, sep, tail = template.rpartition("[B]")
    if not sep:
        raise TaskError(f"ioi template {template!r} has no [B] (the subject)")
    template = head + "\0" + tail
    text = template.replace("[A]", a).replace("[B]", b).replace("[PLACE]", place).replace("[OBJECT]", obj)
    return text.replace("\0", b if s2 is None else s2)


def _check_templates(templates: tuple[str, ...]) -> None:
    if not templates:
        raise TaskError("ioi: give at least one template")
    for t in templates:
        if t.count("[A]") != 1 or t.count("[B]") != 2:
            raise TaskError(
                f"ioi template {t!r} must contain [A] (the indirect object) once and [B] (the "
                "subject) twice; [PLACE] and [OBJECT] are optional"
            )


def build_ioi(
    model: ModelHandle,
    n: int = 250,
    *,
    seed: int = 0,
    flavour: str = "oneill-bui",
    templates: tuple[str, ...] | None = None,
) -> PromptSet:
    """``n`` positive and ``n`` paired negative IOI prompts for ``model``'s tokenizer.

    Args:
        model: the model whose tokenizer the prompts are built for.
        n: number of positive (and of negative) prompts.
        seed: seed for every random choice.
        flavour: ``"oneill-bui"`` (third-name negatives, many templates) or ``"acdc"``
            (ACDC's template, all three names random in the negative).
        templates: override the templates ([A], [B] twice, [PLACE], [OBJECT]).

    Returns:
        A :class:`PromptSet` with ``answers`` = IO and ``wrong_answers`` = S ([n, 1] each).
    """
    import torch

    if flavour not in FLAVOURS:
        raise TaskError(f"ioi: unknown flavour {flavour!r}; valid: {', '.join(FLAVOURS)}")
    if n < 1:
        raise TaskError(f"ioi needs n >= 1 prompts, got {n}")
    task = "ioi" if flavour == "oneill-bui" else "ioi-acdc"
    require_tokenizer(model, task)
    if templates is None:
        templates = TEMPLATES if flavour == "oneill-bui" else (ACDC_TEMPLATE,)
    templates = tuple(templates)
    _check_templates(templates)
    names = single_token_words(model, word_list("names.txt"))
    places = single_token_words(model, word_list("places.txt"))
    objects = single_token_words(model, word_list("objects.txt"))
    require(names, 5, "names", model, task)
    require(places, 1, "places", model, task)
    require(objects, 1, "objects", model, task)
    rng = random.Random(seed)
    pool: list[tuple[str, str, str, str]] = []
    for _ in range(max(4 * n, 200)):
        t = rng.choice(templates)
        a, b = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        pos = _fill(t, a, b, place, obj)
        if flavour == "oneill-bui":
            c = rng.choice([x for x in names if x not in (a, b)])
            neg = _fill(t, a, b, place, obj, s2=c)
        else:
            x, y, z = rng.sample([w for w in names if w not in (a, b)], 3)
            neg = _fill(t, x, y, place, obj, s2=z)
        pool.append((pos, neg, a, b))
    keep, toks_pos, toks_neg, length = keep_equal_length(
        model, [p[0] for p in pool], [p[1] for p in pool], n, task
    )
    answers = [model.single_token_id(" " + pool[i][2]) for i in keep]
    wrong = [model.single_token_id(" " + pool[i][3]) for i in keep]
    return PromptSet(
        task=task,
        positive=torch.tensor(toks_pos),
        negative=torch.tensor(toks_neg),
        positive_text=tuple(pool[i][0] for i in keep),
        negative_text=tuple(pool[i][1] for i in keep),
        answers=torch.tensor(answers)[:, None],
        wrong_answers=torch.tensor(wrong)[:, None],
        metadata={
            "metric": "logit_diff",
            "flavour": flavour,
            "seed": seed,
            "seq_len": length,
            "n_names": len(names),
            "n_templates": len(templates),
        },
    )


def build_ioi_acdc(
    model: ModelHandle, n: int = 250, *, seed: int = 0, templates: tuple[str, ...] | None = None
) -> PromptSet:
    """ACDC's IOI: :func:`build_ioi` with ``flavour="acdc"``."""
    return build_ioi(model, n, seed=seed, flavour="acdc", templates=templates)
