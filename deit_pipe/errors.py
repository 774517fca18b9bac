"""Errors users act on. The CLI prints their message as one line and exits non-zero."""


class DeitPipeError(Exception):
    """Base class: the message names the culprit and says what to do."""


class DataError(DeitPipeError):
    """A dataset source is missing, malformed or holds an unreadable file."""


class PlanError(DeitPipeError):
    """An epoch plan or consumption request is inconsistent."""


class ReplayError(DeitPipeError):
    """A replayed view differs from the one the teacher saw."""
