"""The README's main job: a small Griffin on the embedded stdlib corpus, CPU.

Builds the default corpus (the interpreter's standard library source, as
ArrayRecord) and an 8k BPE SentencePiece tokenizer on first use, trains for
600 steps with a checkpoint every 200, then the evaluate command restores the
final checkpoint and scores the validation split.

Command to run:
  python -m trainer.train --config=configs/smoke.py --workdir=/tmp/griffin_smoke
  python -m trainer.evaluate --workdir=/tmp/griffin_smoke

The same on 8 fake CPU devices with a data x fsdp x tensor = 2x2x2 mesh:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m trainer.train \\
      --config=configs/smoke.py --workdir=/tmp/griffin_smoke_8 \\
      --config.mesh.ici_fsdp=2 --config.mesh.ici_tensor=2

Expected: (measured 2026-11-24, 2 shared CPU cores, fresh clone) corpus and
tokenizer built in a few seconds, 600 steps in about 3 minutes, training loss
9.0 at step 1 falling to ~4.4-5.7 (noisy batches), and the evaluate command
prints the validation loss over 16 batches: 2.650 (perplexity 14.15,
accuracy 0.525; commit 46976d8, the whole command 2 min 40 s with pip's cache
warm; 2.654 before 349ad44 changed the loss's summation order), and 4.20 at
512 tokens, 4x the training length.
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
  cd.run.eval_steps = 16  # the first 4 batches are one hard file: 16 are representative
  return cd
