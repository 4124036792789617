"""The learning-rate fit of the sweep: the best peak learning rate of each
width, and a power law in width through them.

The best learning rate of a width is the minimum of a parabola in log(lr)
through the lowest loss of the grid and its two neighbours (the grid's argmin
alone would move in whole grid steps). The law is a least-squares line in
log-log space, log lr* = log c - alpha log width; its band at a width is
exp(2 x the standard error of the line there), which grows with the distance
from the widths swept: that is how far the extrapolation can be trusted.
"""

import math
from typing import Sequence

import numpy as np

from trainer.lr_rule import PowerLaw


def best_learning_rate(lrs: Sequence[float], losses: Sequence[float]) -> float:
  """The minimum of the parabola in log(lr) through the grid's lowest loss
  and its neighbours; at an edge of the grid, or next to a diverged run,
  the grid's own best (at an edge the sweep should be widened, which
  `sweep.py` reports)."""
  order = np.argsort(lrs)
  grid = np.asarray(lrs, float)[order]
  x, y = np.log(grid), np.asarray(losses, float)[order]
  if np.isfinite(y).sum() < 3:
    raise ValueError(f"need >= 3 learning rates with finite losses, got "
                     f"{list(zip(lrs, losses))}")
  y = np.where(np.isfinite(y), y, np.inf)  # a diverged run is the worst loss
  i = int(np.argmin(y))
  if i in (0, len(x) - 1) or not np.all(np.isfinite(y[i - 1:i + 2])):
    return float(grid[i])
  a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
  return float(np.exp(-b / (2 * a))) if a > 0 else float(grid[i])


def fit_power_law(widths: Sequence[int], best_lrs: Sequence[float]) -> PowerLaw:
  """The least-squares line through (log width, log lr*)."""
  if len(widths) < 3:
    raise ValueError(f"a power law needs >= 3 widths, got {list(widths)}")
  x, y = np.log(np.asarray(widths, float)), np.log(np.asarray(best_lrs, float))
  slope, intercept = np.polyfit(x, y, 1)
  residuals = y - (intercept + slope * x)
  sigma = math.sqrt(float(residuals @ residuals) / (len(x) - 2)) if len(x) > 2 else 0.0
  return PowerLaw(coefficient=float(math.exp(intercept)), alpha=float(-slope),
                  widths=tuple(int(w) for w in widths), residual_sigma=sigma,
                  log_width_mean=float(x.mean()),
                  log_width_sxx=float(((x - x.mean()) ** 2).sum()))
