"""The error type for problems a user can fix (bad flags, missing data), shown without a traceback."""


class UserError(Exception):
  """A problem with the user's input: the message names it and the fix."""
