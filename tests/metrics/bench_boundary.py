"""Speed of the exact boundary scoring (not a test; run by hand).

    .venv/bin/python tests/metrics/bench_boundary.py --size 128 160 --n 200
    .venv/bin/python tests/metrics/bench_boundary.py --size 480 640 --n 5 [--workers 2]

Synthetic data: ground truth = thinned boundaries of a random Voronoi partition; prediction =
the boundary map blurred (sigma ~ 1.2 % of the height) plus blurred noise, scaled to [0, 1],
so low thresholds give wide bands and noise blobs, as real network outputs do.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from mtlkit.metrics import BoundaryF


def synthetic(h: int, w: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (12, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    lab = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, -1)
    gt = np.zeros((h, w), bool)
    gt[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    gt[1:, :] |= lab[1:, :] != lab[:-1, :]
    pred = ndi.gaussian_filter(gt.astype(float), 1.5 * h / 128)
    pred = pred / pred.max() + ndi.gaussian_filter(rng.normal(0, noise, (h, w)), 0.7)
    return np.clip(pred, 0, 1).astype(np.float32), gt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, nargs=2, default=(128, 160))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    h, w = args.size
    data = [synthetic(h, w, s) for s in range(args.n)]
    acc = BoundaryF(max_dist=0.011, thresholds=args.thresholds, workers=args.workers)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, args.n, args.batch):
        chunk = data[i:i + args.batch]
        acc.update(torch.from_numpy(np.stack([p for p, _ in chunk]))[:, None],
                   torch.from_numpy(np.stack([g for _, g in chunk]).astype(np.float32))[:, None])
    out = acc.compute()
    acc.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{args.n} images {h}x{w}, {args.thresholds} thresholds, workers {args.workers}: "
          f"wall {wall:.1f} s, main-process cpu {cpu:.1f} s ({wall / args.n * 1e3:.0f} ms/image) "
          f"odsF {out['odsF']:.2f} oisF {out['oisF']:.2f} AP {out['AP']:.2f}")


if __name__ == "__main__":
    main()
