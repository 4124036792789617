"""Griffin-1B (paper Table 2; 1.31B parameters) on v5e-16 (16 chips): sequence
2048, vocabulary 32,000, bf16 compute, f32 parameters and AdamW state.

Mesh: fsdp 16, data 1, tensor 1. Global batch 64 rows x 2048 tokens (4 rows per
chip), remat full.
The data section keeps its defaults: a real run sets `data.dataset` and a
32,000-piece `data.tokenizer` to match the vocabulary.

Compile-only check (no TPU needed; libtpu from the `test` or `tpu` extra):
  python -m aot.compile_check --config=configs/griffin_1b.py --topology=v5e-16

Expected: fits (docs/performance.md dates the measurement) with the defaults
scan_impl=auto and attention_impl=auto, which compile the Pallas RG-LRU and
splash-attention kernels. Per chip: arguments 0.93 GiB, temporaries 4.36 GiB,
peak 4.58 GiB (total 5.4 GiB) of 15.75 GiB usable HBM; 1,048 TFLOPs per step
(analytic), roofline step time 0.44 s at peak bf16 (MFU bound 76%: full remat
recomputes the forward pass). Compiles in 1-4 minutes on a 2-core CPU.

Recipe (docs/recipes.md says where each number comes from):
- 300B tokens (the paper's budget for every downstream model, §3.1), in
  run.steps = 300B / (64 x 2048) = 2,288,818 steps; the steps follow a
  changed batch or length.
- Global batch 131,072 tokens: what fits v5e-16 at 4 rows a chip without
  accumulation; below the 0.5-2M tokens of published 1B recipes, which costs
  no loss per token (more updates per token) but more steps.
- Peak learning rate 1.5e-4: the fitted rule at width 2048 (trainer/lr_rule.py;
  band x/÷ 18: 8.6e-6 to 2.8e-3), AdamW b2 0.95, weight decay 0.1, clipping at 1.0 (defaults,
  not swept); 8,000 warmup steps (1.05B tokens, as the 7B's 2,000 steps of
  0.5M), then cosine decay to a tenth at the last step.
- A checkpoint and a validation loss (50 batches) every 5,000 steps, about
  an hour at the estimated 0.5-1.0 s a step; the three newest kept, and every
  125,000th for good.
"""

from model import presets
from model.config import Remat
from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(presets.get(
      "griffin-1b", compute_dtype="bfloat16", remat=Remat.FULL))
  cd.data.seq_len = 2048
  cd.data.global_batch_size = 64
  cd.mesh.ici_data = -1
  cd.mesh.ici_fsdp = 16
  cd.mesh.ici_tensor = 1
  return config_lib.pretraining_recipe(cd, token_budget=300_000_000_000, warmup_steps=8_000,
                                       save_every_steps=5_000, eval_every_steps=5_000)
