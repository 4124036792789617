"""Evaluate a checkpoint: validation loss and perplexity.

    python -m trainer.evaluate --workdir=DIR_OR_GS_PATH [--step=N] [--eval_batches=N]

The run config comes from the checkpoint itself; parameters only are read, onto
whatever devices this machine has.
"""

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 4, "Validation batches to score.")


def main(argv):
  del argv
  from trainer.eval_lib import evaluate  # after flag parsing: importing JAX is slow
  from trainer.run import make_eval_iterator
  logging.set_verbosity(logging.INFO)
  result = evaluate(_WORKDIR.value, _STEP.value, _EVAL_BATCHES.value, make_eval_iterator)
  print(f"step {result['step']}: validation loss {result['loss']:.4f}, "
        f"perplexity {result['perplexity']:.2f} over {result['tokens']} tokens")


if __name__ == "__main__":
  app.run(main)
