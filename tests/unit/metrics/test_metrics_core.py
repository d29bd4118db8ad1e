"""xaiarena.metrics.core: serial bookkeeping on an oversubscribed machine."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("forced", ["0", "1"])
def test_bookkeeping_threads_follow_the_load_and_are_restored(monkeypatch, forced):
    """Serial bookkeeping only on an oversubscribed machine; model calls always get every thread."""
    from xaiarena.metrics.core import cpu_oversubscribed, full_threads, serial_bookkeeping

    monkeypatch.setenv("XAIARENA_SERIAL_BOOKKEEPING", forced)
    assert cpu_oversubscribed() is (forced == "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = {}

    @serial_bookkeeping
    def metric():
        seen["bookkeeping"] = torch.get_num_threads()
        with full_threads():
            seen["model"] = torch.get_num_threads()
        raise RuntimeError("boom")  # threads are restored on errors too

    try:
        with pytest.raises(RuntimeError, match="boom"):
            metric()
        assert seen == {"bookkeeping": 1 if forced == "1" else 2, "model": 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
