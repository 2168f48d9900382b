"""The data order is a function of the step: resumable and independent of worker count."""

from __future__ import annotations

import torch

from mtlkit.engine.sampling import EpochBatchSampler, SeededDataset


def test_epoch_permutation_covers_and_is_seeded() -> None:
    a = [b for b in EpochBatchSampler(10, 3, seed=1, epoch=0)]
    assert len(a) == 3  # 10 // 3, last partial batch dropped
    idx = [i for b in a for i, _ in b]
    assert len(set(idx)) == 9
    assert a == list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert a != list(EpochBatchSampler(10, 3, seed=1, epoch=1))
    assert a != list(EpochBatchSampler(10, 3, seed=2, epoch=0))


def test_start_offset_resumes_the_same_batches() -> None:
    full = list(EpochBatchSampler(20, 4, seed=0, epoch=3))
    assert list(EpochBatchSampler(20, 4, seed=0, epoch=3, start=2)) == full[2:]


def test_ranks_split_the_global_batch() -> None:
    single = list(EpochBatchSampler(16, 4, seed=0, epoch=0))
    r0 = list(EpochBatchSampler(16, 2, seed=0, epoch=0, rank=0, world=2))
    r1 = list(EpochBatchSampler(16, 2, seed=0, epoch=0, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == single


class _Rand(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(1)


def test_seeded_dataset_is_deterministic_and_leaves_caller_rng() -> None:
    ds = SeededDataset(_Rand())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x = ds[(1, 123)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(x, ds[(2, 123)])
    assert not torch.equal(x, ds[(1, 124)])
