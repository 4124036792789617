"""The sweep's tables, fit and plots (experiments/recipes/sweep.py)."""

import json
import os

from experiments.paper import common
from experiments.recipes import fit
from model import presets

# The sizes the law is asked about: the presets the pod configs train.
TARGETS = ("griffin-1b", "griffin-7b", "griffin-14b")


def write(out: str, widths, lrs, seeds, grid, best, at_best, scaling_runs, seconds):
  law = fit.fit_power_law(widths, [best[w] for w in widths])
  lr_rows = []
  for w in widths:
    seed_losses = [r["loss"] for r in sorted(scaling_runs, key=lambda r: r["seed"])
                   if r["family"] == "griffin" and r["width"] == w]
    edge = " (grid edge)" if at_best[w] in (lrs[0], lrs[-1]) else ""
    lr_rows.append([w, f"{grid[w, lrs[0]]['non_embedding_params']:,}",
                    f"{grid[w, lrs[0]]['tokens']:,}",
                    *[f"{grid[w, lr]['loss']:.4f}" for lr in lrs], f"{best[w]:.2e}{edge}",
                    f"{at_best[w]:g}: " + " / ".join(f"{v:.4f}" for v in seed_losses)])
  predictions = [{"preset": name, "width": presets.get(name).width,
                  "lr": law.predict(presets.get(name).width),
                  "band": law.band(presets.get(name).width)} for name in TARGETS]
  lr_table = common.markdown_table(
      ["width", "non-emb params", "tokens", *[f"lr {lr:g}" for lr in lrs],
       "best lr (parabola)", f"grid point nearest: loss, seeds {seeds}"], lr_rows)
  fit_lines = [f"fit: lr* = {law.coefficient:.4g} x width^-{law.alpha:.3f} over widths "
               f"{list(law.widths)}; residual sigma of log lr* {law.residual_sigma:.3f}"]
  fit_lines += [f"{p['preset']} (width {p['width']}): lr* {p['lr']:.2e}, band x/÷ "
                f"{p['band']:.2f} ({p['lr'] / p['band']:.1e} to {p['lr'] * p['band']:.1e})"
                for p in predictions]
  scaling_rows = []
  for family in sorted({r["family"] for r in scaling_runs}, key=["griffin", "hawk", "mqa"].index):
    for w in widths:
      group = sorted((r for r in scaling_runs if r["family"] == family and r["width"] == w),
                     key=lambda r: r["seed"])
      mean = sum(r["loss"] for r in group) / len(group)
      scaling_rows.append([family, w, f"{group[0]['non_embedding_params']:,}",
                           f"{group[0]['tokens']:,}", f"{group[0]['lr']:g}",
                           f"{group[0]['train_flops']:.2e}",
                           " / ".join(f"{r['loss']:.4f}" for r in group), f"{mean:.4f}"])
  scaling_table = common.markdown_table(
      ["family", "width", "non-emb params", "tokens", "lr", "train FLOPs",
       f"loss, seeds {seeds}", "mean"], scaling_rows)
  runs = list(grid.values()) + [r for r in scaling_runs if (r["width"], r["lr"]) not in grid
                                or r["family"] != "griffin" or r["seed"] != seeds[0]]
  text = "\n".join([lr_table, "", *fit_lines, "", scaling_table, "",
                    f"{len(runs)} runs; this call {seconds:.0f} s"])
  print(text)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(runs, f, indent=1)
  with open(os.path.join(out, "fit.json"), "w") as f:
    json.dump({"law": law._asdict(), "best": {str(w): best[w] for w in widths},
               "at_best": {str(w): at_best[w] for w in widths},
               "predictions": predictions}, f, indent=1)
  common.plot(os.path.join(out, "lr_sweep.png"),
              [(f"width {w}", lrs, [grid[w, lr]["loss"] for lr in lrs]) for w in widths],
              xlabel="peak learning rate", ylabel="validation loss (nats per byte)",
              title="Griffin: loss against peak learning rate", xscale="log",
              points=[(best[w], min(grid[w, lr]["loss"] for lr in lrs),
                       "best (parabola)" if w == widths[0] else None) for w in widths])
  common.plot(os.path.join(out, "scaling.png"),
              [(family, [float(row[5]) for row in scaling_rows if row[0] == family],
                [float(row[7]) for row in scaling_rows if row[0] == family])
               for family in dict.fromkeys(row[0] for row in scaling_rows)],
              xlabel="training FLOPs", ylabel="validation loss (nats per byte)",
              title="Loss against training FLOPs (mean of seeds)", xscale="log")
