"""The peak learning rate by model width: the power law fitted to the
learning-rate sweep of `experiments/recipes/sweep.py` (docs/recipes.md: the
runs, the fit, and how far its extrapolation can be trusted). The pod configs
take their learning rate from it; a run whose rate is outside its band gets
a warning at start (`optimizer.lr_rule_warning=False` says the rate is
intended)."""

import math
from typing import NamedTuple


class PowerLaw(NamedTuple):
  """lr*(width) = coefficient x width^-alpha, fitted over `widths`."""

  coefficient: float
  alpha: float
  widths: tuple[int, ...]
  residual_sigma: float  # the standard deviation of log lr* about the line
  log_width_mean: float
  log_width_sxx: float  # sum of (log width - mean)^2

  def predict(self, width: float) -> float:
    return self.coefficient * width ** -self.alpha

  def band(self, width: float) -> float:
    """The factor f of the band [lr / f, lr x f] at `width`: two standard
    errors of the fitted line there (small-sample t not applied), so it
    widens with the distance from the widths swept."""
    n = len(self.widths)
    spread = (math.log(width) - self.log_width_mean) ** 2 / self.log_width_sxx
    return math.exp(2 * self.residual_sigma * math.sqrt(1 / n + spread))


# experiments/recipes/sweep.py's fit (docs/recipes.md); tests/test_recipes.py
# refits it from experiments/recipes/sweep_results.json.
RULE = PowerLaw(coefficient=1.0328477230703856, alpha=1.155577955831286,
                widths=(32, 64, 128), residual_sigma=0.40328174617972384,
                log_width_mean=4.1588830833596715, log_width_sxx=0.9609060278364026)


def recipe_learning_rate(rule: PowerLaw, width: int) -> float:
  """The rule's rate at `width`, to two significant digits (a config value)."""
  return float(f"{rule.predict(width):.2g}")


def check(rule: PowerLaw, learning_rate: float, width: int) -> str:
  """'' if `learning_rate` is inside the rule's band at `width`, else why not."""
  predicted, band = rule.predict(width), rule.band(width)
  if predicted / band <= learning_rate <= predicted * band:
    return ""
  return (f"optimizer.learning_rate={learning_rate:g} is outside "
          f"[{predicted / band:.2g}, {predicted * band:.2g}], the band of the learning-rate "
          f"rule at width {width} ({predicted:.2g}, fitted over widths {list(rule.widths)}; "
          "docs/recipes.md); set optimizer.lr_rule_warning=False if that rate is intended")


def warning(config) -> str:
  """What a run of `config` is warned about at start ('' for nothing)."""
  if not config.optimizer.lr_rule_warning:
    return ""
  return check(RULE, config.optimizer.learning_rate, config.model.width)
