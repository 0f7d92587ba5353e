"""The daemon's garbage-collector tuning: survivors of a full collection are frozen, then thawed."""

from __future__ import annotations

import gc

from pswd_gateway.runtime import HeapKeeper


def test_survivors_of_a_full_collection_are_frozen_and_thawed_on_schedule() -> None:
    threshold = gc.get_threshold()
    keeper = HeapKeeper(refreeze_after_s=3600.0)
    try:
        keeper.install()
        assert gc.get_freeze_count() > 0
        kept = [{"n": [i]} for i in range(1000)]
        before = gc.get_freeze_count()
        gc.collect()  # a full collection: its survivors (``kept``) are frozen afterwards
        assert keeper.full_collections == 1
        assert gc.get_freeze_count() >= before + len(kept)
        keeper.refreeze_after_s = 0.0
        gc.collect()  # the hour is up: thaw, so the next full collection sees everything
        assert gc.get_freeze_count() == 0
    finally:
        keeper.uninstall()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold
    assert keeper._on_gc not in gc.callbacks
