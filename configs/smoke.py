"""Smoke run: a tiny Griffin trained for a few steps on CPU (8 fake devices).

Trains, evaluates, checkpoints and logs on the embedded stdlib corpus, so every
part of the system runs once without a network.

Command to run:
  python -m trainer.smoke --config=configs/smoke.py

The same on 8 fake CPU devices with a data x fsdp x tensor = 2x2x2 mesh:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m trainer.smoke \
      --config=configs/smoke.py --config.mesh.ici_fsdp=2 --config.mesh.ici_tensor=2

Expected: about 30 s on 2 CPU cores; validation loss ~6.0 at init -> ~3.5
after 20 steps (bytes, 645,504 parameters), decode error ~3e-6, and the line
"smoke run OK".
"""

from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.data.seq_len = 64
  cd.data.global_batch_size = 8
  cd.optimizer.warmup_steps = 5
  cd.run.steps = 20
  cd.run.log_every_steps = 5
  cd.run.eval_every_steps = 10
  cd.run.eval_steps = 2
  cd.checkpoint.save_every_steps = 10
  cd.checkpoint.max_to_keep = 2
  return cd
