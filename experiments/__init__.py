"""Experiments: runs that reproduce results, each printing the table that
docs/results.md or docs/recipes.md holds. `paper/` has the paper's small
experiments (selective copying, induction heads, loss by position beyond the
training length); `recipes/` the learning-rate sweep, its fitted rule for the
pod configs (trainer/lr_rule.py) and the paper's Fig. 1a at CPU scale.

Every experiment trains through `trainer.train_loop.run_steps` and scores
through `trainer.evaluate_lib`, the code `python -m trainer.train` and
`python -m trainer.evaluate` run. Commands, from the repository root:
  python -m experiments.paper.<name> --out=/tmp/<dir>
  python -m experiments.recipes.sweep --out=/tmp/<dir>
"""
