"""Griffin-7B (paper Table 2) on v5p-64 (32 chips) or v5e-256 (256 chips):
sequence 2048, vocabulary 32,000, bf16 compute, f32 parameters and AdamW state.

Mesh: fsdp 32, data = the rest (1 on v5p-64, 8 on v5e-256), tensor 1. fsdp
cannot exceed 32: the RG-LRU gate blocks are 5632 / 16 = 352 wide and ZeRO
shards that width (352 = 32 x 11). Global batch 256 rows x 2048 tokens.
Remat save_matmuls: the backward pass recomputes the element-wise work but
keeps the matmul outputs, whose recompute (full remat) would add a quarter to
the step's FLOPs; both pods have the memory for it (below).
The data section keeps its defaults: a real run sets `data.dataset` and a
32,000-piece `data.tokenizer` to match the vocabulary.

Compile-only checks (no TPU needed; libtpu from the `test` or `tpu` extra); the
same file serves both pods, the data axis takes the rest of the chips:
  python -m aot.compile_check --config=configs/griffin_7b.py --topology=v5p-64
  python -m aot.compile_check --config=configs/griffin_7b.py --topology=v5e-256

Expected: both fit (docs/performance.md dates the measurement) with the defaults
scan_impl=auto and attention_impl=auto, the Pallas RG-LRU and splash-attention
kernels. v5p-64: arguments 2.44 GiB, temporaries 74.03 GiB, peak 57.83 GiB
(total 76.6 GiB) of 95.74 GiB usable HBM. v5e-256 (data 8 x fsdp 32):
arguments 2.44 GiB, temporaries 12.38 GiB, peak 10.96 GiB (total 14.95 GiB, the
upper bound, 95% of the 15.75 GiB usable HBM). 21,967 TFLOPs per step
(analytic). Each compiles in 2-5 minutes on a 2-core CPU.

The mesh is the best of the layouts compiled (docs/performance.md, issue 21's
section): pure ZeRO-3 meets the 65% estimate on v5p-64 (66.6% with nothing
overlapped); on v5e-256 tensor 4 x fsdp 8 gives no gain (34.8% against
35.1%), the step there being bound by HBM traffic.

Recipe (docs/recipes.md says where each number comes from):
- 300B tokens (the paper's budget for every downstream model, §3.1), in
  run.steps = 300B / (256 x 2048) = 572,204 steps; the steps follow a
  changed batch or length.
- Global batch 524,288 tokens (256 rows): one row a chip on v5e-256, eight on
  v5p-64; Gopher's and Chinchilla's smaller models trained at 0.25-1M tokens.
- Peak learning rate 6.9e-5: the fitted rule at width 4096 (trainer/lr_rule.py;
  band x/÷ 32: 2.2e-6 to 2.2e-3), AdamW b2 0.95, weight decay 0.1, clipping at 1.0 (defaults,
  not swept); 2,000 warmup steps (Llama 2's count), then cosine decay to a
  tenth at the last step.
- A checkpoint and a validation loss (50 batches) every 4,000 steps: 40-80
  minutes on v5e-256 (an estimated 0.6-1.2 s a step), 1.7-2.5 hours on v5p-64
  (1.5-2.3 s); the three newest kept, and every 100,000th for good. For frequent saves between them, add the local tier
  (--config.checkpoint.local_dir=/dev/shm/griffin
  --config.checkpoint.local_every_steps=200; docs/launch.md section 8).
"""

from model import presets
from model.config import Remat
from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(presets.get(
      "griffin-7b", compute_dtype="bfloat16", remat=Remat.SAVE_MATMULS))
  cd.data.seq_len = 2048
  cd.data.global_batch_size = 256
  cd.mesh.ici_data = -1
  cd.mesh.ici_fsdp = 32
  cd.mesh.ici_tensor = 1
  return config_lib.pretraining_recipe(cd, token_budget=300_000_000_000, warmup_steps=2_000,
                                       save_every_steps=4_000, eval_every_steps=4_000)
