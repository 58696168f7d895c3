"""TokenBridge's post-training, dimension-wise quantizer of Gaussian latents (exactly as the official
``TokenBridge.quantize``).

Every latent value (one channel of one position) is mapped on its own to one of ``levels`` codes:

* normalise: ``xn = clamp((x - value_min) / (value_max - value_min) * 2 r - r, -r, r)`` with ``r = std_range``
  ([-5, 5] -> [-3, 3] for the released models);
* levels: the ``levels + 1`` equal-probability quantiles of N(0, 1) (clamped to [-r, r]) bound ``levels`` bins;
  level k is the mean of N(0, 1) truncated to bin k (``centroids``), so every code is equally likely for a standard
  normal input and the decoded value is the conditional mean of its bin;
* assign: the nearest centroid (ties to the lower index, as ``argmin``); the decision edges are therefore the midpoints
  between centroids, not the stored quantile ``boundaries`` (which the official code keeps but never uses);
* dequantise: the centroid mapped back to latent units.

The centroids are computed the official way, in float32 (``exp`` / ``erf`` of float32 bin edges), which leaves them
slightly asymmetric (up to 5.5e-6 from the float64 truncated means for 64 levels); a released checkpoint stores them
as buffers, and `load_state_dict` takes those.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gaussian_levels(levels: int, std_range: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boundaries (levels + 1,), centroids (levels,))`` float32 in standard-normal units (the official values)."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels: an integer >= 2, got {levels!r}")
    if not (math.isfinite(std_range) and std_range > 0):
        raise ValueError(f"std_range: a positive number of standard deviations, got {std_range!r}")
    probs = torch.linspace(0, 1, levels + 1, dtype=torch.float32)
    # the official code takes scipy's float64 norm.ppf of these float32 probabilities, then rounds to float32
    boundaries = torch.special.ndtri(probs.double()).float().clamp(-std_range, std_range)
    a, b = boundaries[:-1], boundaries[1:]
    pdf_a, pdf_b = torch.exp(-0.5 * a ** 2) / math.sqrt(2 * math.pi), torch.exp(-0.5 * b ** 2) / math.sqrt(2 * math.pi)
    cdf_a, cdf_b = 0.5 * (1 + torch.erf(a / math.sqrt(2))), 0.5 * (1 + torch.erf(b / math.sqrt(2)))
    mass = cdf_b - cdf_a
    centroids = (pdf_a - pdf_b) / torch.where(mass == 0, torch.full_like(mass, 1e-10), mass)
    return boundaries, centroids


class GaussianQuantizer(nn.Module):
    """Scalar quantizer of (approximately) standard-normal latents into ``levels`` equal-probability codes.

    ``quantize(x)`` -> ``(codes, values)``: ``x`` float ``(...)``, codes int64 ``(...)`` in ``0..levels-1`` and their
    dequantised values ``(...)`` in latent units; ``dequantize(codes)`` -> values. Generic over the number of levels
    (``2 ** bits``), the value range and the clamp in standard deviations.
    """

    def __init__(self, levels: int = 64, value_min: float = -5.0, value_max: float = 5.0, std_range: float = 3.0):
        super().__init__()
        if not (math.isfinite(value_min) and math.isfinite(value_max) and value_max > value_min):
            raise ValueError(f"value range: value_min < value_max needed, got [{value_min}, {value_max}]")
        self.levels, self.value_min, self.value_max, self.std_range = levels, float(value_min), float(value_max), \
            float(std_range)
        boundaries, centroids = gaussian_levels(levels, std_range)
        # official buffer names, so a released checkpoint's buffers load as they are
        self.register_buffer("reconstruction_values", centroids)
        self.register_buffer("boundaries", boundaries)

    @property
    def bits(self) -> float:
        return math.log2(self.levels)

    def level_values(self) -> torch.Tensor:
        """``(levels,)`` the dequantised value of every code, in latent units."""
        r = self.std_range
        return (self.reconstruction_values + r) / (2 * r) * (self.value_max - self.value_min) + self.value_min

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"quantize: expected a float tensor of latents, got {getattr(x, 'dtype', type(x))}")
        if x.numel() and not torch.isfinite(x).all():
            raise ValueError("quantize: the latents contain NaN or infinite values")
        r = self.std_range
        normalised = ((x - self.value_min) / (self.value_max - self.value_min) * (2 * r) - r).clamp(-r, r)
        codes = (normalised.unsqueeze(-1) - self.reconstruction_values).abs().argmin(dim=-1)  # (...,)
        return codes, self.level_values()[codes]

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(f"dequantize: expected integer codes, got {getattr(codes, 'dtype', type(codes))}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.levels):
            raise ValueError(f"dequantize: codes must be in 0..{self.levels - 1}, got values in "
                             f"{int(codes.min())}..{int(codes.max())}")
        return self.level_values()[codes]

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, value_range=[{self.value_min}, {self.value_max}], "
                f"std_range={self.std_range}")


__all__ = ["GaussianQuantizer", "gaussian_levels"]
