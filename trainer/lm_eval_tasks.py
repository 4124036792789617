"""lm-eval task names, our named suites, and the tasks' data, all checked
before a model is restored or a run starts.

lm-eval is an optional extra: this file imports it only when tasks are
looked up, so a missing install or a bad task name is reported in a second
or two.
"""

import difflib
import importlib
import os

SUITES = {
    # The paper's Table 1 (De, Smith et al., 2024): MMLU, HellaSwag, PIQA,
    # WinoGrande, ARC-E, ARC-C.
    "paper_table1": ("mmlu", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge"),
    # The zero-shot suite of the linear-RNN papers (Mamba, GLA, ...).
    "linear_rnn_zero_shot": ("wikitext", "lambada_openai", "piqa", "hellaswag", "winogrande",
                             "arc_easy", "arc_challenge"),
}
INSTALL = "pip install -e '.[lm_eval]'"
FEWSHOT_SEED = 1234  # lm-eval's default, so few-shot examples are those its CLI picks


def require_harness():
  """Imports lm-eval, or says how to install it."""
  try:
    importlib.import_module("lm_eval")
  except ImportError as e:
    raise ImportError(f"lm-eval is not installed ({e}); install it with {INSTALL}") from e


def expand_tasks(tasks: str, flag: str = "--tasks") -> list[str]:
  """Comma-separated task names -> names, each suite replaced by its tasks
  (first occurrence kept)."""
  names = []
  for name in (part.strip() for part in str(tasks).split(",")):
    for task in SUITES.get(name, (name,) if name else ()):
      if task not in names:
        names.append(task)
  if not names:
    raise ValueError(f"{flag}={tasks!r} names no task; give lm-eval task names or a "
                     f"suite of {sorted(SUITES)}, comma-separated")
  return names


def task_manager(names: list[str], include_path: str = "", builtin_tasks: bool = True,
                 flag: str = "--tasks", path_flag: str = "--include_path"):
  """lm-eval's index of the tasks under `include_path` and, with
  `builtin_tasks`, of its own (~15k names: about 10 s on 2 cores), once every
  name is known to it: else one line naming the first unknown one and the
  closest known names."""
  require_harness()
  from lm_eval.tasks import TaskManager
  if include_path and not os.path.isdir(include_path):
    raise ValueError(f"{path_flag}={include_path} is not a directory of lm-eval task YAMLs")
  if not include_path and not builtin_tasks:
    raise ValueError(f"no tasks to choose from: {path_flag} is empty and the built-in tasks "
                     "are turned off")
  manager = TaskManager(include_path=include_path or None, include_defaults=builtin_tasks)
  known = set(manager.all_tasks)
  for name in names:
    if name not in known:
      where = " or ".join(([] if not builtin_tasks else ["lm-eval's own"])
                          + ([f"those under {include_path}"] if include_path else []))
      close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.75)
      raise ValueError(f"{flag}: {name!r} is not a task, group or tag among {where}; "
                       f"closest: {close or 'none'}; suites: {sorted(SUITES)}")
  return manager


def load_tasks(manager, names: list[str], flag: str = "--tasks") -> dict:
  """lm-eval's {"tasks", "groups", "group_map"} of `names`, their datasets
  read now (downloaded from the Hugging Face hub unless cached): one line if
  they cannot be."""
  try:
    return manager.load(names)
  except (ConnectionError, FileNotFoundError) as e:
    offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")
    raise ValueError(
        f"{flag}={','.join(names)}: a task's data could not be read ({e}). lm-eval reads "
        "task data from the Hugging Face hub into HF_DATASETS_CACHE (default "
        "~/.cache/huggingface/datasets): run once where the hub is reachable"
        + (", or unset HF_DATASETS_OFFLINE" if offline else "")
        + "; a cached task then runs offline") from e


def top_level(loaded: dict) -> list:
  """The loaded groups and tasks that no loaded group contains: what
  `TaskManager.load` rebuilds `loaded` from (for `simple_evaluate`)."""
  children = {child for names in loaded["group_map"].values() for child in names}
  items = {**loaded["groups"], **loaded["tasks"]}
  return [item for name, item in items.items() if name not in children]
