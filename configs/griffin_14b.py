"""Griffin-14B (paper Table 2) on v5p-128 (64 chips): sequence 2048, vocabulary
32,000, bf16 compute, f32 parameters and AdamW state.

Mesh: fsdp 64 (ZeRO-3 over every chip), data 1, tensor 1. Global batch 256 rows
x 2048 tokens (4 rows per chip), remat full (each scanned R,R,A group keeps only
its input).
The data section keeps its defaults: a real run sets `data.dataset` and a
32,000-piece `data.tokenizer` to match the vocabulary.

Compile-only check (no TPU needed; libtpu from the `test` or `tpu` extra):
  python -m launch.aot --config=configs/griffin_14b.py --topology=v5p-128

Expected: fits (2026-11-24, commit 8e41dea: the default scan_impl=auto compiles
the Pallas RG-LRU kernel). Per chip: arguments 2.47 GiB, temporaries 17.99 GiB,
peak 17.29 GiB (total 20.6 GiB) of 95.74 GiB usable HBM; 44,129 TFLOPs per step
(analytic), roofline step time 2.0 s at peak bf16 (MFU bound 75%: full remat
recomputes the forward pass). Compiles in ~2 minutes on a quiet 2-core CPU. The
large headroom allows a bigger batch or a lighter remat policy.
"""

from model import presets
from model.config import Remat
from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(presets.get(
      "griffin-14b", compute_dtype="bfloat16", remat=Remat.FULL))
  cd.data.seq_len = 2048
  cd.data.global_batch_size = 256
  cd.mesh.ici_data = -1
  cd.mesh.ici_fsdp = 64
  cd.mesh.ici_tensor = 1
  return cd
