"""Errors users act on. The CLI prints their message as one line and exits non-zero."""


class DeitPipeError(Exception):
    """Base class: the message names the culprit and says what to do."""


class DataError(DeitPipeError):
    """A dataset source is missing, malformed or holds an unreadable file."""


class PlanError(DeitPipeError):
    """An epoch plan or consumption request is inconsistent."""


class ReplayError(DeitPipeError):
    """A replayed view differs from the one the teacher saw."""


class StoreError(DeitPipeError):
    """A target store cannot be used as asked; the message says what differs."""


class StoreFormatError(StoreError):
    """Not a deit-pipe store, or a format version this code does not read."""


class StoreNotFoundError(StoreFormatError):
    """Nothing is stored at the URL yet."""


class StoreAccessError(StoreError):
    """The store's storage cannot be reached, or not with these credentials."""


class StoreMismatchError(StoreError):
    """The store was made for another dataset, plan or job."""


class StoreIncompleteError(StoreError):
    """Shards a caller needs are not marked done (never read half-written data)."""


class StoreCorruptError(StoreError):
    """A chunk failed its checksum or cannot be decoded."""


class ConfigError(DeitPipeError):
    """An argument's value is out of range or inconsistent with another (checked up front)."""


class OutputPathError(DeitPipeError):
    """An output path holds something deit-pipe did not write: it is never written into."""


class LockedError(DeitPipeError):
    """Another job is writing the same store or run directory (or the same epochs)."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


class TeacherError(DeitPipeError):
    """The teacher cannot be built or does not fit the dataset or plan."""


class WeightsFileError(DeitPipeError):
    """A weights file is missing, of the wrong kind, or unreadable."""


class InitFromError(DeitPipeError):
    """The `--init-from` source is missing or cannot initialise this student."""


class DivergedError(DeitPipeError):
    """Training produced a non-finite loss, gradient norm or weight; the run stopped."""


class CheckpointError(DeitPipeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


CREDENTIALS_HINT = (
    'check the credentials (--storage-options \'{"key": …, "secret": …}\' or '
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
)


def caused_by(exc: BaseException, *names: str, kinds: tuple = ()) -> bool:
    """Whether `exc` or an exception behind it is one of `kinds` or has one of `names` in its
    class name (backends' own exception types, without importing optional backends)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kinds) or any(n in type(seen).__name__ for n in names):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backend_problem(exc: BaseException) -> str | None:
    """What an object store's failure means to the user (credentials, an endpoint out of
    reach), or None for other failures."""
    if caused_by(exc, "Credential"):  # botocore's NoCredentialsError, PartialCredentialsError
        return f"{exc}; {CREDENTIALS_HINT}"
    if caused_by(exc, "Connect", "Timeout", kinds=(ConnectionError, TimeoutError)):
        return f"cannot reach the storage endpoint ({exc})"
    return None


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: argument checks that read as the rule."""
    if not ok:
        raise ConfigError(message)


# The object-store libraries whose own failures mean options they were given do not fit.
BACKENDS = ("botocore", "aiobotocore", "boto3", "s3fs", "gcsfs", "google", "adlfs", "azure")


def raised_in_backend(exc: BaseException) -> str | None:
    """The object-store library `exc` (or one behind it) was raised in, or None: a failure
    deep in s3fs or botocore is the options' or the endpoint's, not a bug to show whole."""
    seen: BaseException | None = exc
    while seen is not None:
        tb = seen.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.split(".")[0] in BACKENDS:
                return module.split(".")[0]
            tb = tb.tb_next
        seen = seen.__cause__ or seen.__context__
    return None


def backend_line(exc: BaseException, backend: str) -> str:
    """One line for a failure inside an object-store library: what it said, and where the
    options it was given come from."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return (
        f"the storage backend ({backend}) refused the request: {type(exc).__name__}: {text}; "
        "check --storage-options / --data-storage-options (their keys and value types) and "
        "the endpoint"
    )
