"""Training recipes: the learning-rate fit (experiments/recipes/fit.py) on
data with a known answer, the shipped rule refitted from the shipped sweep,
the pod configs' recipe fields, and the recipe's bad input. No compiles."""

import importlib
import json
import math
import pathlib

import numpy as np
import pytest

from experiments.recipes import fit
from trainer import config as config_lib
from trainer import lr_rule

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "recipes" / "sweep_results.json"


def test_the_fit_recovers_a_known_power_law():
  widths = [32, 64, 128, 256]
  exact = fit.fit_power_law(widths, [0.5 * w ** -0.8 for w in widths])
  assert exact.coefficient == pytest.approx(0.5, rel=1e-9)
  assert exact.alpha == pytest.approx(0.8, rel=1e-9)
  assert exact.residual_sigma == pytest.approx(0.0, abs=1e-9)
  noise = np.exp([0.1, -0.1, 0.1, -0.1])  # log lr* off the line by +-0.1
  noisy = fit.fit_power_law(widths, [0.5 * w ** -0.8 * n for w, n in zip(widths, noise)])
  assert noisy.alpha == pytest.approx(0.8, abs=0.1)
  # The band: about exp(2 sigma / sqrt(n)) at the centre, wider far out.
  centre = math.exp(noisy.log_width_mean)
  assert noisy.band(centre) == pytest.approx(math.exp(2 * noisy.residual_sigma / 2), rel=1e-9)
  assert noisy.band(4096) > noisy.band(256) > noisy.band(centre)


def test_the_best_rate_is_the_parabola_minimum_or_the_grids():
  lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
  # Loss quadratic in log lr with its minimum at 5e-3: the parabola finds it.
  losses = [2.0 + (math.log(lr) - math.log(5e-3)) ** 2 for lr in lrs]
  assert fit.best_learning_rate(lrs, losses) == pytest.approx(5e-3, rel=1e-9)
  assert fit.best_learning_rate(lrs[::-1], losses[::-1]) == pytest.approx(5e-3, rel=1e-9)
  falling = [3.0, 2.8, 2.6, 2.5, 2.4]  # the best at the grid's edge
  assert fit.best_learning_rate(lrs, falling) == 1.6e-2
  diverged = [3.0, 2.5, 2.4, float("nan"), float("inf")]  # a NaN run is the worst
  assert fit.best_learning_rate(lrs, diverged) == 4e-3
  with pytest.raises(ValueError, match="need >= 3 learning rates with finite losses"):
    fit.best_learning_rate(lrs, [2.0, 1.0, float("nan"), float("nan"), float("nan")])


def test_the_shipped_rule_is_the_fit_of_the_shipped_sweep():
  runs = json.loads(SWEEP.read_text())
  grid = [r for r in runs if r["family"] == "griffin" and r["seed"] == min(
      r["seed"] for r in runs)]
  widths = sorted({r["width"] for r in grid})
  best = []
  for w in widths:
    at_width = sorted((r for r in grid if r["width"] == w), key=lambda r: r["lr"])
    best.append(fit.best_learning_rate([r["lr"] for r in at_width],
                                       [r["loss"] for r in at_width]))
  assert fit.fit_power_law(widths, best) == pytest.approx(lr_rule.RULE, rel=1e-9)


@pytest.mark.parametrize("name", ["griffin_1b", "griffin_7b", "griffin_14b"])
def test_pod_configs_are_recipes(name):
  config = config_lib.build(importlib.import_module(f"configs.{name}").get_config())
  tokens_per_step = config.data.global_batch_size * config.data.seq_len
  assert config.run.token_budget == 300_000_000_000  # the paper's, every size
  assert (config.run.steps * tokens_per_step <= config.run.token_budget
          < (config.run.steps + 1) * tokens_per_step)
  assert config.optimizer.warmup_steps < config.run.steps // 100
  assert config.optimizer.decay_steps == 0  # the cosine ends with the run
  width = config.model.width
  assert config.optimizer.learning_rate == lr_rule.recipe_learning_rate(lr_rule.RULE, width)
  assert lr_rule.warning(config) == ""  # inside the fit's band
  # About an hour of a pod between saves and evaluations (docs/recipes.md).
  assert config.checkpoint.save_every_steps == config.run.eval_every_steps
  assert config.run.steps // config.checkpoint.save_every_steps > 100


def test_a_changed_batch_moves_the_steps_and_contradictions_are_named():
  from configs import griffin_7b
  cd = griffin_7b.get_config()
  cd.data.global_batch_size = 512  # as --config.data.global_batch_size=512 would
  assert config_lib.build(cd).run.steps == 300_000_000_000 // (512 * 2048)
  cd.run.steps = 10_000
  with pytest.raises(ValueError, match=r"^run.steps=10000 and run.token_budget=300,000,000,000 "
                     r"contradict: at data.global_batch_size x data.seq_len = 512 x 2048 = "
                     r"1,048,576 tokens a step the budget is 286,102 steps; set that "
                     r"run.steps, or run.token_budget=0"):
    config_lib.build(cd)
  cd.run.token_budget = 0  # a number of steps of one's own
  assert config_lib.build(cd).run.steps == 10_000


def test_a_warmup_longer_than_the_run_is_refused():
  cd = config_lib.defaults()
  cd.run.steps, cd.optimizer.warmup_steps = 50, 100
  with pytest.raises(ValueError, match=r"optimizer.warmup_steps=100 must be below the decay "
                     r"steps \(50: optimizer.decay_steps, or run.steps when it is 0\)"):
    config_lib.build(cd)


def test_a_rate_outside_the_rule_warns_unless_intended():
  from configs import griffin_7b
  cd = griffin_7b.get_config()
  cd.optimizer.learning_rate = 0.5
  warning = lr_rule.warning(config_lib.build(cd))
  low = lr_rule.RULE.predict(4096) / lr_rule.RULE.band(4096)
  assert warning.startswith(f"optimizer.learning_rate=0.5 is outside [{low:.2g}, ")
  assert "set optimizer.lr_rule_warning=False if that rate is intended" in warning
  cd.optimizer.lr_rule_warning = False
  assert lr_rule.warning(config_lib.build(cd)) == ""
