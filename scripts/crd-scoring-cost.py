"""CRD's bank scoring, forward and backward, per training step: nas-kd's ``bank_dots`` (one anchor x bank
product, then the drawn columns) against RepDistiller's gather of the B x (k+1) drawn rows and a bmm.
Medians of interleaved repeats, at the published nce_k and feat_dim, for banks the size of
Fashion-MNIST's, CIFAR's and larger training splits:

    python scripts/crd-scoring-cost.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nas_kd.distill.terms.crd import bank_dots


def gather_dots(bank: torch.Tensor, anchor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ContrastMemory: index_select the rows, then bmm."""
    return torch.bmm(bank[rows], anchor[:, :, None]).squeeze(2)


def step_seconds(dots: Callable, bank: torch.Tensor, rows: torch.Tensor, batch: int, dim: int) -> float:
    anchor = F.normalize(torch.randn(batch, dim), dim=1).requires_grad_()
    start = time.perf_counter()
    torch.exp(dots(bank, anchor, rows) / 0.07).log().sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--nce-k", type=int, default=16384)
    parser.add_argument("--feat-dim", type=int, default=128)
    parser.add_argument("--rows", default="50000,54000,262144")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, nce_k {args.nce_k}, feat_dim {args.feat_dim}, {args.threads} thread(s), per bank")
    print("| bank rows | gather + bmm s/step | bank_dots s/step | speed-up |\n|---|---|---|---|")
    for n in (int(r) for r in args.rows.split(",")):
        bank = F.normalize(torch.randn(n, args.feat_dim), dim=1)
        rows = torch.randint(0, n, (args.batch, args.nce_k + 1))
        anchor = F.normalize(torch.randn(args.batch, args.feat_dim), dim=1)
        assert torch.allclose(bank_dots(bank, anchor, rows), gather_dots(bank, anchor, rows), atol=1e-5)
        times: dict[Callable, list[float]] = {gather_dots: [], bank_dots: []}
        for dots in times:  # warm-up
            step_seconds(dots, bank, rows, args.batch, args.feat_dim)
        for _ in range(args.repeats):
            for dots in times:
                times[dots].append(step_seconds(dots, bank, rows, args.batch, args.feat_dim))
        gather, ours = (statistics.median(t) for t in times.values())
        print(f"| {n:,} | {gather:.3f} | {ours:.3f} | {gather / ours:.1f}x |")


if __name__ == "__main__":
    main()
