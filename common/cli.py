"""How every command starts, and how it refuses input.

`run(main)` is absl's `app.run` for the commands a user types, except that
bad input ends in one line on stderr, `<command>: <what is wrong>`, and exit
status 1, with no traceback:
- flags absl cannot parse (unknown, missing, ill-typed), stray positional
  arguments, and a `--config.*` override that names no config field;
- a ValueError or ImportError raised by this repository's code: those are
  its refusals of input, and each names the value and what is valid.
`--verbosity=1` (absl's flag) shows their tracebacks too. Any other error,
and a ValueError raised inside a library, is unexpected and keeps its
traceback.
"""

import pathlib
import sys
import traceback
from typing import Callable

from absl import app, flags, logging

REPO = pathlib.Path(__file__).resolve().parents[1]
HELP = "--helpshort lists the flags"


def command_name() -> str:
  """`trainer.train` for `python -m trainer.train`; else the script's name."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  return spec.name if spec else pathlib.Path(sys.argv[0]).stem


def raised_here(error: BaseException) -> bool:
  """Whether the innermost frame of `error` is this repository's code (not
  an installed library's)."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  path = pathlib.Path(frames[-1].filename).resolve()
  return path.is_relative_to(REPO) and "site-packages" not in path.parts


def is_refusal(error: BaseException) -> bool:
  """A ValueError or ImportError that our code raised: bad input, named."""
  return isinstance(error, (ValueError, ImportError)) and raised_here(error)


def refuse(message: str):
  """Ends the command with `<command>: <message>` on stderr, exit status 1."""
  sys.stderr.flush()
  sys.exit(f"{command_name()}: {message}")


def override_error(argv: list[str], error: Exception) -> str:
  """One line for ml_collections' error on `--config.a.b=v` naming a field
  that does not exist: which argument, and its suggestion."""
  inner = error.args[0] if error.args else error
  text = str(inner.args[0] if isinstance(inner, Exception) and inner.args else inner)
  name, _, hint = text.partition("\n")
  name = name.strip("'\"")
  arguments = [a for a in argv if a.startswith("-") and "." in a.split("=")[0]
               and name in a.split("=")[0].split(".")]
  where = arguments[0] if arguments else f"a --config.* override ({name!r})"
  return f"{where}: the config has no field {name!r}" + (f"; {hint.strip()}" if hint else "")


def verbose() -> bool:
  """--verbosity=1 or more: refusals show their tracebacks too."""
  return flags.FLAGS.verbosity >= 1


def run(main: Callable, beam_args: bool = False):
  """Parses the flags (strictly), then calls `main()`; logs from WARNING up
  unless --verbosity says otherwise (0: INFO, 1: DEBUG and tracebacks). With
  `beam_args`, the arguments after `--` are Apache Beam's: `main(those)`."""

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:
      refuse(f"{e}; {HELP}")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no field
      refuse(override_error(argv, e))
    if len(rest) > 1 and not beam_args:
      config = f" (a config file is --config={rest[1]})" if rest[1].endswith(".py") else ""
      refuse(f"unexpected argument {rest[1]!r}: every input is a --flag{config}; {HELP}")
    if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines: --verbosity=0
      logging.set_verbosity(logging.WARNING)
    return rest

  def call(argv):
    try:
      main(argv[1:]) if beam_args else main()
    except (ValueError, ImportError) as e:
      if verbose() or not raised_here(e):
        raise
      refuse(str(e))

  app.run(call, flags_parser=parse)
