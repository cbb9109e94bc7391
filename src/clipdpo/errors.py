"""The one exception type that means "the user asked for something that cannot work".

Entry points print a `UserError` as one line and exit with code 2 (the traceback only with
`--debug`); any other exception is a bug and keeps its traceback. Config, storage, artifact and
source errors derive from it, so the message each raises is what the user reads.
"""


class UserError(Exception):
    """Bad input, config, credentials or location; the message says what is wrong and what to do."""
