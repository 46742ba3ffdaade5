"""Float comparisons that hold on any CPU: float32 results differ between machines in the last bits, so a
tolerance is stated relative to the size of the values compared (or the reference is float64), never as a
bare absolute number."""

from __future__ import annotations

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one rounding step at magnitude 1


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, relative: float = 1e-5) -> None:
    """Every |actual - expected| <= relative * max|expected| (e.g. 1e-5 ~ 84 float32 rounding steps at the
    largest value): the error budget of a float32 computation, whatever the values' scale."""
    expected = torch.as_tensor(expected)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), expected.double(), rtol=0, atol=relative * max(scale, 1e-30)
    )
