"""The 1-D Wasserstein distance W1 between two empirical distributions, in torch
(differentiable): the S(., .) of MGOR Sec. 3.2's conditional pairwise alignment, which
the paper calls the 1-D sliced Wasserstein distance (in one dimension the sliced and the
plain distance coincide).

Exact for samples of different sizes n and m (uniform weights 1/n and 1/m), through the
quantile (inverse-CDF) form W1 = integral_0^1 |F^-1(q) - G^-1(q)| dq: both quantile
functions are step functions, constant between the levels {i/n} and {j/m}; on the merged
grid of levels the integral is a finite sum. With n = m it reduces to the mean absolute
difference of the sorted samples. Equal to POT's `ot.wasserstein_1d(u, v, p=1)` (checked
in the tests). Gradients flow through `torch.sort` to every sample.
"""

from __future__ import annotations

import torch


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W1 between the empirical distributions of the values in `u` and `v` (any shapes,
    flattened; sizes may differ). Zero for identical distributions."""
    u, v = u.reshape(-1), v.reshape(-1)
    n, m = u.numel(), v.numel()
    if n == 0 or m == 0:
        raise ValueError(f"wasserstein_1d needs two non-empty samples, got sizes {n} and {m}")
    us, vs = torch.sort(u).values, torch.sort(v).values
    device = u.device
    # Quantile levels as integers on the grid 1..n*m: i/n = i*m/(nm), j/m = j*n/(nm).
    levels = torch.unique(torch.cat([torch.arange(1, n + 1, device=device) * m,
                                     torch.arange(1, m + 1, device=device) * n]))
    widths = torch.diff(levels, prepend=levels.new_zeros(1)).to(us.dtype) / (n * m)
    # On (previous level, level], F^-1 is the ceil(level / m)-th smallest u, G^-1 the
    # ceil(level / n)-th smallest v.
    a = torch.div(levels + m - 1, m, rounding_mode="floor") - 1
    b = torch.div(levels + n - 1, n, rounding_mode="floor") - 1
    return (widths * (us[a] - vs[b]).abs()).sum()


def weighted_wasserstein_1d(u: torch.Tensor, u_mask: torch.Tensor, v: torch.Tensor,
                            v_mask: torch.Tensor) -> torch.Tensor:
    """W1 between the uniform empirical distributions of u[u_mask] and v[v_mask] (any
    shapes, flattened), 0 when either is empty — `wasserstein_1d` of the selected values,
    computed on the whole tensors: a selection's size is known only to the data (a host
    sync on a GPU, issue 19). Through the CDF form W1 = integral |F(t) - G(t)| dt: on the
    merged sorted values, sum_k |F_k - G_k| (x_(k+1) - x_k), where an excluded value has
    weight 0 (it splits a segment, the sum is unchanged)."""
    u, v = u.reshape(-1), v.reshape(-1)
    u_mask, v_mask = u_mask.reshape(-1), v_mask.reshape(-1)
    n, m = u_mask.sum(), v_mask.sum()
    # excluded values read as 0: finite (an excluded inf never makes inf - inf), no gradient
    values = torch.cat([torch.where(u_mask, u, torch.zeros_like(u)), torch.where(v_mask, v, torch.zeros_like(v))])
    wu = torch.cat([u_mask.to(u.dtype) / n.clamp(min=1), v.new_zeros(v.shape)])
    wv = torch.cat([u.new_zeros(u.shape), v_mask.to(v.dtype) / m.clamp(min=1)])
    xs, order = torch.sort(values)
    gap = (wu[order].cumsum(0) - wv[order].cumsum(0)).abs()[:-1]
    w1 = (gap * torch.diff(xs)).sum()
    return torch.where((n > 0) & (m > 0), w1, torch.zeros_like(w1))
