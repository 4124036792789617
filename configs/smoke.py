"""The README's main job: a small Griffin on the embedded stdlib corpus, CPU.

Builds the default corpus (the interpreter's standard library source) into a
token store with an 8k BPE SentencePiece tokenizer on first use (an Apache
Beam pipeline on this machine, a few seconds), trains for 600 steps with a
checkpoint every 200, then the evaluate command restores the final
checkpoint and scores a fixed sample of the validation split.

Command to run:
  python -m trainer.train --config=configs/smoke.py --workdir=/tmp/griffin_smoke
  python -m trainer.evaluate --workdir=/tmp/griffin_smoke

The same on 8 fake CPU devices with a data x fsdp x tensor = 2x2x2 mesh:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m trainer.train \\
      --config=configs/smoke.py --workdir=/tmp/griffin_smoke_8 \\
      --config.mesh.ici_fsdp=2 --config.mesh.ici_tensor=2

Expected: (2 shared CPU cores; docs/evaluation.md dates the measured run) store and tokenizer built
in about 7 s, 600 steps in about 2 minutes, training loss 9.42 at step 1 falling
to ~4.2-5.5 (noisy batches), and the evaluate command prints the validation
loss over 16 batches: 4.491 (perplexity 89.2, accuracy 0.300), and 4.52 at
512 tokens, 4x the training length. (Before the token store, the first 16
unshuffled validation batches scored 2.650: one easy file, not a sample.)
"""

from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.data.dataset = "stdlib"
  cd.model.vocab_size = 8192
  cd.data.seq_len = 128
  cd.data.global_batch_size = 8
  cd.optimizer.warmup_steps = 20
  cd.run.steps = 600
  cd.run.log_every_steps = 25
  cd.checkpoint.save_every_steps = 200
  cd.run.eval_every_steps = 200
  cd.run.eval_steps = 16  # batches of a fixed sample of the validation split
  return cd
