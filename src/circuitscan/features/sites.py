"""Sublayer sites: where a standard SAE reads a model's activations.

A site is named ``kind.layer``:

==============  =================================================  ==========================
name            what it is                                         TransformerLens hook
==============  =================================================  ==========================
``embed``       the residual stream entering layer 0               ``blocks.0.hook_resid_pre``
``attn.L``      layer L's attention output (all heads, after W_O)  ``blocks.L.hook_attn_out``
``mlp.L``       layer L's MLP output                               ``blocks.L.hook_mlp_out``
``resid.L``     the residual stream leaving layer L                ``blocks.L.hook_resid_post``
==============  =================================================  ==========================

Sites are ordered as the forward pass computes them: ``embed`` < ``attn.L`` <
``mlp.L`` < ``resid.L`` < ``attn.L+1``. ``resid.L`` is a *cut*: every path from a
site at or before it to a site after it passes through it (``embed`` is the cut
"resid.-1"). Marks et al.'s four-sublayer block of layer L is ``resid.L-1, attn.L,
mlp.L, resid.L``; ``block.L`` names it in a site list (``block.0`` starts at ``embed``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import CircuitscanError

KINDS = ("embed", "attn", "mlp", "resid")
_ORDER = {"attn": 0, "mlp": 1, "resid": 2}
_SITE_RE = re.compile(r"^(attn|mlp|resid|block)\.(\d+)(?:-(\d+))?$")


@dataclass(frozen=True, order=False)
class Site:
    """One sublayer: ``kind`` in :data:`KINDS`, ``layer`` (-1 for ``embed``)."""

    kind: str
    layer: int

    @property
    def name(self) -> str:
        return "embed" if self.kind == "embed" else f"{self.kind}.{self.layer}"

    @property
    def hook(self) -> str:
        if self.kind == "embed":
            return "blocks.0.hook_resid_pre"
        suffix = {"attn": "hook_attn_out", "mlp": "hook_mlp_out", "resid": "hook_resid_post"}[self.kind]
        return f"blocks.{self.layer}.{suffix}"

    @property
    def key(self) -> tuple[int, int]:
        """Sort key in forward order."""
        return (-1, 2) if self.kind == "embed" else (self.layer, _ORDER[self.kind])

    @property
    def is_cut(self) -> bool:
        """A residual-stream site: everything downstream is reached only through it."""
        return self.kind in ("embed", "resid")

    @property
    def last_layer(self) -> int:
        """The last layer the forward pass must run to compute this site."""
        return max(self.layer, 0)

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: Site) -> bool:
        return self.key < other.key


def parse_site(text: str) -> Site:
    """Parse one site name (no ranges, no blocks)."""
    sites = parse_sites(text)
    if len(sites) != 1 or text.strip().startswith("block"):
        raise CircuitscanError(f"{text!r} names {len(sites)} sites; give one site such as resid.3, attn.3 or mlp.3")
    return sites[0]


def parse_sites(spec: str | list[str] | tuple[str, ...], n_layers: int | None = None) -> list[Site]:
    """Parse a comma-separated site list into sorted, distinct sites.

    Accepts ``embed``, ``attn.L``, ``mlp.L``, ``resid.L``, ranges such as ``attn.0-5``
    and ``block.L`` (= ``resid.L-1, attn.L, mlp.L, resid.L``). With ``n_layers`` every
    layer is checked against the model.
    """
    items = spec if isinstance(spec, list | tuple) else str(spec).split(",")
    out: set[Site] = set()
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        if item == "embed":
            out.add(Site("embed", -1))
            continue
        m = _SITE_RE.match(item)
        if m is None:
            raise CircuitscanError(
                f"cannot read site {raw.strip()!r}: write embed, attn.L, mlp.L, resid.L (L a layer number), "
                "a range such as attn.0-5, or block.L for the four sublayers resid.L-1, attn.L, mlp.L, resid.L"
            )
        kind, lo = m.group(1), int(m.group(2))
        hi = int(m.group(3)) if m.group(3) is not None else lo
        if hi < lo:
            raise CircuitscanError(f"site range {raw.strip()!r} runs backwards; write {kind}.{hi}-{lo}")
        for layer in range(lo, hi + 1):
            if kind == "block":
                out.add(Site("embed", -1) if layer == 0 else Site("resid", layer - 1))
                out.update((Site("attn", layer), Site("mlp", layer), Site("resid", layer)))
            else:
                out.add(Site(kind, layer))
    if not out:
        raise CircuitscanError("no sites given; name at least one, e.g. --sites resid.3 or --sites block.4")
    sites = sorted(out)
    if n_layers is not None:
        bad = [s.name for s in sites if s.layer >= n_layers]
        if bad:
            raise CircuitscanError(
                f"site(s) {', '.join(bad)} do not exist: the model has {n_layers} layers (0..{n_layers - 1})"
            )
    return sites


def check_sites_exist(sites: list[Site], hook_names, spec: str) -> None:
    """Raise a clear error if the model lacks a site's hook point (e.g. no MLPs)."""
    missing = [s for s in sites if s.hook not in hook_names]
    if missing:
        s = missing[0]
        raise CircuitscanError(
            f"model {spec!r} has no hook point {s.hook!r} for site {s.name}"
            + (" (it is attention-only: it has no MLP sites)" if s.kind == "mlp" else "")
        )


def upstream_of(target: Site | None, sites: list[Site]) -> list[Site]:
    """The sites a node at ``target`` (None: the model's output) can depend on *directly*
    once intermediate sites are held fixed, in forward order.

    That is every site before ``target`` from the latest cut before it onwards: sites
    before that cut reach ``target`` only through it, so their direct effect is zero.
    """
    before = [s for s in sites if target is None or s < target]
    cuts = [i for i, s in enumerate(before) if s.is_cut]
    return before[cuts[-1]:] if cuts else before


class _StopForward(Exception):
    """Raised in the last site's hook: nothing after it is needed."""


def capture_sites(model, tokens, sites: list[Site], *, attention_mask=None, keep_dtype: bool = False) -> dict[str, object]:
    """Run ``model`` on ``tokens`` up to the last of ``sites`` and return each site's
    activations ``{name: [batch, pos, d_model]}`` (detached; float32 unless ``keep_dtype``).

    The forward pass stops right after the last site's hook, so a site in layer 3 of a
    30-layer model costs about a tenth of a full pass.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    last = max(sites)

    def make(site: Site):
        def hook(x, hook):  # noqa: ARG001
            out[site.name] = x.detach() if keep_dtype else x.detach().float()
            if site == last:
                raise _StopForward
            return x

        return hook

    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    try:
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(s.hook, make(s)) for s in sites], **kwargs)
    except _StopForward:
        pass
    missing = [s.name for s in sites if s.name not in out]
    if missing:
        raise CircuitscanError(f"model {model.spec!r} never reached the hook point(s) of site(s) {', '.join(missing)}")
    return out
