"""The one check of integer settings, so every refusal reads the same way."""


def check_int(label: str, value, low: int = 1, also: str = "") -> int:
  """`value` when it is an int (a bool is not) >= `low`; else ValueError
  naming `label`=value and what is valid (`also`: a sentence more)."""
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    valid = "a positive integer" if low == 1 else f"an integer >= {low}"
    raise ValueError(f"{label}={value!r} must be {valid}{'; ' + also if also else '.'}")
  return value


def check_ints(section: str, config, low: int, *names: str):
  """`check_int` of each named field of `config`, labelled `section.name`."""
  for name in names:
    check_int(f"{section}.{name}", getattr(config, name), low)
