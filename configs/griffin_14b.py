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
  return cd
