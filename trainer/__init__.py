"""The composition root: configs, train state, steps, checkpoints and the absl mains."""
