"""Griffin-7b (paper Table 2), sequence 2048, vocabulary 32,000, bf16 compute.

PLACEHOLDER
"""

from model import presets
from model.config import Remat
from trainer import config as config_lib


def get_config():
  cd = config_lib.defaults()
  cd.model = config_lib.model_config_dict(presets.get(
      "griffin-7b", compute_dtype="bfloat16", remat=Remat.FULL))
  cd.data.seq_len = 2048
  cd.data.global_batch_size = 256
  cd.mesh.ici_data = -1
  cd.mesh.ici_fsdp = 32
  cd.mesh.ici_tensor = 1
  return cd
