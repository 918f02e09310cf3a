"""Merge a VQGAN's near-duplicate codes into fewer, distinct ones, keeping the taming layout.

Why: the demo world tokenizer's 1,024 codes hold many near-duplicates. Which of two near-identical
codes a place gets depends on tiny changes of context, so the generators must predict choices that
carry no picture content (token entropy they cannot lower), and a crop encodes unlike the whole
picture. Merging the codes by usage-weighted k-means into ``k`` centroids costs almost nothing in
the round-trip (measured in BENCHMARKS.md) and removes those choices.

The codebook keeps its row count: every row is set to its cluster's centroid, so the rows of one
cluster are equal and the quantizer's first-minimum search always returns the cluster's first row
(its *representative*). Loaders, nodes and token maps stay as they are; token maps made with the
old codebook are moved to the new one by ``remap_k[old_tokens]``.
"""
from __future__ import annotations

import torch


def merge_codebook(codebook_ke: torch.Tensor, usage_k: torch.Tensor, k: int, iters: int = 30,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Usage-weighted k-means of the codes: ``(cluster of each row [K], merged codebook [K, E])``."""
    codes = codebook_ke.detach().double()
    weight_k = usage_k.double() + 1e-3                     # unused codes still join their nearest cluster
    if not 0 < k <= len(codes):
        raise ValueError(f"cannot merge {len(codes)} codes into {k}")
    generator = torch.Generator().manual_seed(seed)
    centroids = codes[torch.multinomial(weight_k, k, replacement=False, generator=generator)].clone()
    for _ in range(iters):
        assign_k = torch.cdist(codes, centroids).argmin(1)
        mass = torch.zeros(k, dtype=torch.float64).index_add_(0, assign_k, weight_k)
        sums = torch.zeros_like(centroids).index_add_(0, assign_k, codes * weight_k[:, None])
        centroids = torch.where(mass[:, None] > 0, sums / mass.clamp_min(1e-12)[:, None], centroids)
    assign_k = torch.cdist(codes, centroids).argmin(1)
    return assign_k, centroids[assign_k].to(codebook_ke.dtype)


def representatives(assign_k: torch.Tensor) -> torch.Tensor:
    """For every row, the first row of its cluster: what the quantizer returns for that cluster."""
    first = {}
    for row, cluster in enumerate(assign_k.tolist()):
        first.setdefault(cluster, row)
    return torch.tensor([first[cluster] for cluster in assign_k.tolist()], dtype=torch.long)
