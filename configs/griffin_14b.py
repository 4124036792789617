"""Griffin-14B (paper Table 2) on v5p-128 (64 chips): sequence 2048, vocabulary
32,000, bf16 compute, f32 parameters and AdamW state.

Mesh: fsdp 64 (ZeRO-3 over every chip), data 1, tensor 1. Global batch 256 rows
x 2048 tokens (4 rows per chip). Remat save_matmuls: the backward pass keeps
the matmul outputs and recomputes only the element-wise work (full remat would
recompute every matmul, a quarter more FLOPs); the memory is there (below).
The data section keeps its defaults: a real run sets `data.dataset` and a
32,000-piece `data.tokenizer` to match the vocabulary.

Compile-only check (no TPU needed; libtpu from the `test` or `tpu` extra):
  python -m aot.compile_check --config=configs/griffin_14b.py --topology=v5p-128

Expected: fits (docs/performance.md dates the measurement) with the defaults
scan_impl=auto and attention_impl=auto, the Pallas RG-LRU and splash-attention
kernels. Per chip: arguments 2.47 GiB, temporaries 57.05 GiB, peak 47.22 GiB
(total 59.7 GiB) of 95.74 GiB usable HBM; 44,129 TFLOPs per step (analytic).
Compiles in ~2 minutes on a quiet 2-core CPU.

The mesh is the best of the layouts compiled (docs/performance.md, issue 21's
section): pure ZeRO-3 estimates 65.7% MFU with nothing overlapped; the paper's
tensor-parallel layout, tensor 8 x fsdp 8, 50.8% (its activation all-reduces
outweigh the weight gathers it saves at 4 rows a chip).

On v5e-256 (one row a chip) add
  --config.model.remat=full --config.mesh.ici_fsdp=32 --config.mesh.ici_tensor=2
(data takes the other 4): the saved matmul outputs do not fit 16 GB chips
(17.6 GiB at tensor 2), and there the paper's tensor split pays: 35.3%
against ZeRO-3's 31.7%, with peak 7.1 GiB and total 9.2 GiB of 15.75 GiB.

Recipe (docs/recipes.md says where each number comes from):
- 300B tokens (the paper's budget for every downstream model, §3.1), in
  run.steps = 300B / (256 x 2048) = 572,204 steps; the steps follow a
  changed batch or length.
- Global batch 524,288 tokens (256 rows, 4 a chip on v5p-128), as the 7B.
- Peak learning rate 5.3e-5: the fitted rule at width 5120 (trainer/lr_rule.py;
  band x/÷ 38: 1.4e-6 to 2.0e-3), AdamW b2 0.95, weight decay 0.1, clipping at 1.0 (defaults,
  not swept); 2,000 warmup steps, then cosine decay to a tenth at the last
  step.
- A checkpoint and a validation loss (50 batches) every 2,000 steps, about
  an hour at the estimated 1.5-2.3 s a step; the three newest kept, and
  every 50,000th for good. The local tier as for the 7B.
"""

from model import presets
from model.config import Remat
from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(presets.get(
      "griffin-14b", compute_dtype="bfloat16", remat=Remat.SAVE_MATMULS))
  cd.data.seq_len = 2048
  cd.data.global_batch_size = 256
  cd.mesh.ici_data = -1
  cd.mesh.ici_fsdp = 64
  cd.mesh.ici_tensor = 1
  return config_lib.pretraining_recipe(cd, token_budget=300_000_000_000, warmup_steps=2_000,
                                       save_every_steps=2_000, eval_every_steps=2_000)
