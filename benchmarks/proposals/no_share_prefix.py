"""bench_collect.py --hf_patch: the same collector with the shared prompt prefix turned off
(``--no_share_prefix``), to measure what sharing the prefix saves on its own."""

import dataclasses


def apply():
    from hf_introspect.collection import run as collector

    real = collector.collect

    def collect(cfg, **kw):
        return real(dataclasses.replace(cfg, share_prefix=False), **kw)

    collector.collect = collect
