"""A file the system failed to read (an I/O error, permission denied, a stale network
mount) is not a file whose content is bad. Telling the two apart matters: a researcher
told "corrupt, copy it again" or "relabel" for a transient disk fault may delete a good
checkpoint or hours of labels. Readers of annotation files (core.data.annotations) and
of weights (core.training.checkpoint.reading_weights) report such faults as
`FileReadFault`, one line naming the file and the OS error."""

from __future__ import annotations

import errno as errnos
from pathlib import Path


class FileReadFault(OSError):
    """The system failed to read a file: not a verdict on its content. One line naming
    the file and the OS error."""

    def __str__(self) -> str:
        return str(self.strerror)


def read_fault(path: str | Path, what: str, exc: OSError) -> FileReadFault:
    """The fault line for `exc` (an OSError with an errno) met reading `path` as `what`."""
    return FileReadFault(exc.errno, f"{path}: the {what} could not be read from disk "
                                    f"([Errno {exc.errno}] {exc.strerror or exc}); it was not judged corrupt "
                                    "and is left as it is: try again once the disk or permissions allow")


def os_error_reading(path: str | Path, cause: BaseException | None = None) -> OSError | None:
    """The OSError with an errno (other than a missing file) behind a failed read of
    `path`: in `cause`'s chain (a reader that let the system's error through), else met
    by reading the whole file again (readers in C++, e.g. torch's zip reader, turn the
    system's error into their own words). None when the file reads."""
    seen: list[BaseException] = []
    while cause is not None and cause not in seen:
        seen.append(cause)
        if isinstance(cause, OSError) and cause.errno not in (None, errnos.ENOENT) \
                and cause.filename in (None, str(path), path):  # not another file's error
            return cause
        cause = cause.__cause__ or cause.__context__
    try:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc if exc.errno is not None else None
    return None
