"""Feature graphs (``circuitscan features``) as circuit-tracer / Neuronpedia graph JSON.

circuit-tracer's frontend models (``circuit_tracer.frontend.graph_models.Model``) hold
``metadata`` {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
schema_version}, ``qParams`` {pinnedIds, supernodes, linkType, clickedId, sg_pos},
``nodes`` [{node_id, feature, layer, ctx_idx, feature_type, jsNodeId, clerp, influence,
activation, token_prob, is_target_logit, ...}] and ``links`` [{source, target, weight}].

How our graph (:class:`circuitscan.features.graph.AttributionGraph`) is written:

=====================  ===========================================================
our node               their node
=====================  ===========================================================
feature i at a site    ``feature_type`` "cross layer transcoder" (the frontend's
                       feature kind; ours are per-sublayer SAE features, said in
                       ``clerp``), ``feature`` = i, ``layer`` = the site's layer
                       (``"E"`` for ``embed``)
error / rest node      ``feature_type`` "mlp reconstruction error", ``feature`` -1
                       (error) / -2 (rest: the features not kept)
output (objective)     ``feature_type`` "logit", ``layer`` = n_layers + 1,
                       ``is_target_logit`` true
=====================  ===========================================================

``node_id`` and ``jsNodeId`` are our node ids with ``/`` as ``_`` (``attn.3_f17``), unique
because attention, MLP and residual sites of one layer have their own ids; ``ctx_idx`` is
the position carrying most of the node's score; ``influence`` our node score;
``activation`` our mean activation; links are our edges with their weights.
"""

from __future__ import annotations

from typing import Any

_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
          "rest": "mlp reconstruction error", "output": "logit"}


def _layer(site: str, n_layers: int) -> str:
    if site == "embed":
        return "E"
    if site == "output":
        return str(n_layers + 1)
    return site.rsplit(".", 1)[-1]


def _jid(node_id: str) -> str:
    return node_id.replace("/", "_")


def neuronpedia_graph(graph: Any, *, slug: str, scan: str, n_layers: int, prompt: str = "",
                      prompt_tokens: list[str] | None = None) -> dict[str, Any]:
    """An :class:`~circuitscan.features.graph.AttributionGraph` as circuit-tracer graph JSON."""
    nodes = []
    for n in graph.nodes.values():
        feature = n.feature if n.kind == "feature" else (-1 if n.kind == "error" else -2 if n.kind == "rest" else 0)
        what = f"{n.site} SAE feature {n.feature}" if n.kind == "feature" else f"{n.site} {n.kind}"
        nodes.append({
            "node_id": _jid(n.id), "jsNodeId": _jid(n.id), "feature": int(feature or 0),
            "layer": _layer(n.site, n_layers),
            "ctx_idx": int(n.position or 0), "feature_type": _TYPES.get(n.kind, n.kind),
            "is_target_logit": n.kind == "output", "clerp": what,
            "influence": float(n.score), "activation": float(n.activation),
        })
    links = [{"source": _jid(s), "target": _jid(d), "weight": float(w)} for (s, d), w in graph.edges.items()]
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": list(graph.sites),
                     "prompt_tokens": list(prompt_tokens or []), "prompt": prompt, "node_threshold": None,
                     "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
