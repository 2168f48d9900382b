"""Measurements a run makes of itself: forward-pass timing and peak memory."""

from __future__ import annotations

import torch
from torch import nn

from mtlkit.engine.resources import ForwardTimer, peak_memory


def test_forward_timer_counts_images_of_timed_forwards_only() -> None:
    model = nn.Conv2d(3, 4, 3)
    x = torch.randn(5, 3, 8, 8)
    model(x)  # before: not timed
    with ForwardTimer(model) as timer:
        model(x)
        model(x[:2])
    model(x)  # after: the hooks are gone
    assert timer.images == 7 and timer.seconds > 0
    assert timer.images_per_s == timer.images / timer.seconds
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_forward_timer_without_forwards() -> None:
    with ForwardTimer(nn.Linear(2, 2)) as timer:
        pass
    assert timer.images == 0 and timer.images_per_s is None


def test_peak_memory_on_cpu_grows_with_an_allocation() -> None:
    before, kind = peak_memory(torch.device("cpu"))
    assert kind == "cpu_peak_rss" and before > 0
    big = torch.ones(64 * 2**20 // 4 + int(before * 2**20 // 4))  # past the previous peak
    after, _ = peak_memory(torch.device("cpu"))
    assert after > before
    del big
