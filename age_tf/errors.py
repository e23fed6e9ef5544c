"""The error type for problems a user can fix (bad flags, missing data), shown without a traceback."""


class UserError(Exception):
  """A problem with the user's input: the message names it and the fix."""


class TrainingStopped(Exception):
  """Training ended early on purpose (a signal, a NaN): the message says why and what is kept."""

  def __init__(self, message, exit_code):
    super().__init__(message)
    self.exit_code = exit_code
