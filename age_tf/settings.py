"""Declared settings: a name, type, help and checks, from which the command-line flag is made."""

import dataclasses
import math

from absl import flags

from age_tf.errors import UserError

KINDS = ("integer", "float", "bool", "enum", "string")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One setting a method reads.

  `default` is the value when neither the command line nor the method's
  per-dataset defaults give one (None: the per-dataset defaults must). The
  flag itself always defaults to None, so "not given" is told apart from
  "given the default", and a flag of another method is refused when given.
  """
  name: str
  kind: str
  help: str
  default: object = None
  choices: tuple = ()
  positive: bool = False      # > 0
  non_negative: bool = False  # >= 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Setting {self.name}: unknown kind {self.kind!r}; valid: {KINDS}.")
    if (self.kind == "enum") != bool(self.choices):
      raise ValueError(f"Setting {self.name}: choices go with kind 'enum' only.")

  def same_flag(self, other):
    """Whether two declarations can share one flag (same name, kind and choices)."""
    return (self.name, self.kind, self.choices) == (other.name, other.kind, other.choices)

  def check(self, value):
    """Raises UserError for a value the declaration refuses (None passes: unset)."""
    if value is None:
      return
    if self.kind == "enum" and value not in self.choices:
      raise UserError(f"--{self.name}={value!r} is not one of {', '.join(self.choices)}.")
    if self.kind in ("integer", "float"):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--{self.name}={value!r} must be a number.")
      if not math.isfinite(value):
        raise UserError(f"--{self.name}={value} must be a finite number.")
      if self.positive and value <= 0:
        raise UserError(f"--{self.name}={value} must be a positive number.")
      if self.non_negative and value < 0:
        raise UserError(f"--{self.name}={value} must not be negative.")


def define_flags(declarations_by_owner, flag_values=flags.FLAGS):
  """Defines one absl flag per setting name, for settings declared by several owners.

  `declarations_by_owner` maps an owner (a method name) to its Settings. A
  name several owners declare becomes one flag; its help is the first
  declaration's, followed by the owners that read it. Returns {name: owners}.
  """
  owners, first, helps = {}, {}, {}
  for owner, declarations in declarations_by_owner.items():
    for setting in declarations:
      if setting.name in first and not first[setting.name].same_flag(setting):
        raise ValueError(f"Setting {setting.name} is declared with different kinds or "
                         f"choices by {owners[setting.name][0]} and {owner}.")
      first.setdefault(setting.name, setting)
      owners.setdefault(setting.name, []).append(owner)
      if setting.help not in helps.setdefault(setting.name, []):
        helps[setting.name].append(setting.help)
  for name, setting in first.items():
    if name in flag_values:
      continue
    text = f"{' / '.join(helps[name])} [--method={', '.join(owners[name])}]"
    define = {"integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
              "bool": flags.DEFINE_bool, "string": flags.DEFINE_string}
    if setting.kind == "enum":
      flags.DEFINE_enum(name, None, list(setting.choices), text, flag_values=flag_values)
    else:
      define[setting.kind](name, None, text, flag_values=flag_values)
  return {name: tuple(o) for name, o in owners.items()}
