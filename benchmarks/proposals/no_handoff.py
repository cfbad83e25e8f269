"""bench_collect.py --hf_patch: the same collector without handing per-question prefixes between
passes (``other_conf`` runs its prompts after the pass-wide prefix whole), the pass-wide shared
prefix kept: what the hand-off saves on its own."""


def apply():
    from hf_introspect.collection import estimate  # the plan decides the pairs (collection/estimate.py)

    estimate.handoff_pairs = lambda cfg, prompts, contexts: {}
