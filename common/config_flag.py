"""`--config=configs/X.py` with `--config.section.field=v` overrides: the flag,
and reading it with one clear line for each way it can be wrong."""

import pathlib

from absl import flags
from ml_collections import config_flags


def define_config_flag(name: str = "config",
                       flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """Defines `--<name>=configs/X.py` with `--<name>.section.field=v` overrides.

  Locked, so an override of a field that does not exist fails at parsing.
  Mains call it at module level and pass `flag_config(holder)` to `build`.
  """
  return config_flags.DEFINE_config_file(
      name, None, "Path to a config file in configs/ (a get_config() function).",
      flag_values=flag_values, lock_config=True)


def flag_config(holder: flags.FlagHolder | flags.Flag, required: bool = True):
  """The ConfigDict of `--<name>=configs/X.py` (None when not given and not
  `required`), or a ValueError naming what is wrong: a missing flag, no such
  file, or a file that fails to load."""
  flag = (holder._flagvalues[holder.name]  # noqa: SLF001 - the holder's own Flag
          if isinstance(holder, flags.FlagHolder) else holder)
  configs = sorted(f"configs/{p.name}" for p in
                   (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
  value = flag.value
  try:
    if value is not None:
      value.to_dict  # noqa: B018 - ml_collections defers a failed load to the first read
  except OSError as e:
    path = config_flags.get_config_filename(flag)
    if not pathlib.Path(path).is_file():
      raise ValueError(f"--{flag.name}={path}: no such config file; the configs: "
                       f"{configs}") from e
    raise ValueError(f"--{flag.name}={path} failed to load: {e.__cause__ or e}") from e
  if value is None and required:
    raise ValueError(f"--{flag.name} is required: a config file, e.g. "
                     f"--{flag.name}=configs/smoke.py; the configs: {configs}")
  return value
