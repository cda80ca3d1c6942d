"""Feature-level circuits: Marks et al. (2024), "Sparse Feature Circuits", beside the
head-level discrete codes of the rest of circuitscan (docs/FEATURES.md).

* :mod:`.sites` — sublayer sites (``embed``, ``attn.L``, ``mlp.L``, ``resid.L``) and their hooks;
* :mod:`.corpus` — an offline corpus (the model's own samples, shipped text, Python's docs);
* :mod:`.saes` — the sublayer SAE set and its directory; :mod:`.sae_train` — standard SAEs on sublayers, trained streamed and batched, saved per site;
* :mod:`.graph` — the attribution graph (node = f * dm/df, edges with the double-counting correction);
* :mod:`.ablate` — validation by ablating nodes and threads, and the graph's faithfulness;
* :mod:`.interpret` — promoted / suppressed tokens and top-activating contexts per feature;
* :mod:`.heads` — the graph's head-level view, registered as the method ``feature-attribution``.

Nothing here is imported by ``circuitscan`` or its CLI at start-up.
"""
