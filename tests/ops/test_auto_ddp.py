"""Under DDP every rank runs rank 0's choice (issue 15): two gloo ranks whose own measurements
would disagree end with the same implementation, and the same numbers."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

from tests.ops.conftest import FakeTimer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from mtlkit import ops
    from mtlkit.ops import dispatch, tuning

    os.environ["MTLKIT_CACHE"] = str(Path(folder) / f"cache{rank}")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        # each rank's own timer prefers another implementation
        fastest = "sdpa" if rank == 0 else "reference"
        timer = FakeTimer({fastest: 1.0}, run=False)
        g = torch.Generator().manual_seed(0)  # the same inputs on both ranks
        q = torch.randn(2, 3, 9, 4, generator=g, requires_grad=True)
        mw = torch.randn(3, 3, generator=g, requires_grad=True)
        with tuning.use_timer(timer), dispatch.recording() as log:
            out = ops.tpp_attention(q, q, q, mw)  # needs a gradient: rank 0 decides
            out.sum().backward()
            ops.tpp_attention(q, q, q, mw)  # the same key again: no collective, no timing
            with torch.no_grad():  # evaluation: each rank decides alone (no collective)
                ops.tpp_attention(q, q, q, mw)
        torch.save({"ran": sorted((r.grad, r.impl, r.source) for r in log),
                    "timed": timer.calls, "out": out.detach(), "grad": q.grad},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_rank_0s_choice(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (True, "sdpa", "auto: measured") in r0["ran"]
    assert (True, "sdpa", "auto: rank 0") in r1["ran"]  # not its own favourite
    assert r0["timed"] == ["reference", "sdpa", "reference", "sdpa"]  # grad key, no-grad key
    assert r1["timed"] == ["reference", "sdpa"]  # only its no-grad key
    assert (False, "reference", "auto: measured") in r1["ran"]  # per rank without a gradient
    assert torch.equal(r0["out"], r1["out"]) and torch.equal(r0["grad"], r1["grad"])
    assert (tmp_path / "cache0" / "ops-tuning.json").exists()
    cache0 = json.loads((tmp_path / "cache0" / "ops-tuning.json").read_text())["entries"]
    assert sorted(e["grad"] for e in cache0.values()) == [False, True]
    assert not (tmp_path / "cache1").exists()  # only rank 0 writes the cache
