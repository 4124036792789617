"""Evaluation results on disk: `eval_<step>.json` and, when the loss by
position was measured, `loss_by_position_<step>.png`."""

import io
import json

import numpy as np
from etils import epath


def binned(nll_sum_T, count_T, num_bins: int = 32):
  """(bin edges, mean NLL per bin) over log-spaced bins of positions 1..T-1,
  so that the sparse far positions of each bin are pooled."""
  nll_sum_T, count_T = np.asarray(nll_sum_T), np.asarray(count_T)
  T = len(count_T)
  edges = np.unique(np.geomspace(1, T, num_bins + 1).astype(int))
  means = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    count = count_T[lo:hi].sum()
    means.append(nll_sum_T[lo:hi].sum() / count if count else np.nan)
  return edges, np.array(means)


def plot(by_position: dict, title: str) -> bytes:
  """A PNG of mean NLL against document position, training length marked."""
  import matplotlib
  matplotlib.use("Agg")  # no display; must precede pyplot
  from matplotlib import pyplot as plt

  edges, means = binned(by_position["nll_sum"], by_position["count"])
  centers = np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1]))
  figure, axes = plt.subplots(figsize=(6, 4))
  axes.plot(centers, means, marker="o", markersize=3)
  axes.axvline(by_position["train_seq_len"], color="gray", linestyle="--",
               label=f"training length {by_position['train_seq_len']}")
  axes.set(xscale="log", xlabel="token position in document",
           ylabel="mean next-token NLL (nats)", title=title)
  axes.legend()
  axes.grid(alpha=0.3)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
  plt.close(figure)
  return buffer.getvalue()


def write(workdir: str, result: dict):
  """Writes the JSON (and the plot) of `result` for its step into `workdir`."""
  step = result["step"]
  directory = epath.Path(workdir)
  (directory / f"eval_{step}.json").write_text(json.dumps(result, indent=1))
  if "by_position" in result:
    png = plot(result["by_position"], f"step {step}: loss by position")
    (directory / f"loss_by_position_{step}.png").write_bytes(png)
