"""Writing files and folders so that nothing is ever half-written, and nothing foreign is lost.

Every writer in subtune-edge goes through here: a file is written to a hidden temporary name in
its own folder and renamed over the target (readers see the old file or the new one, never half of
one); a folder (an export, a benchmark's results, the demo's output) is built in a hidden sibling
``.NAME.<pid>.partial`` and swapped in only when complete. Both honour the umask, like files the
user writes by hand (``tempfile`` alone would leave them 0600 / 0700). A folder is replaced only
when the caller recognises it as its own earlier output and it holds nothing else: a user's folder
that happens to share a name is refused, never emptied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SubtuneError

PARTIAL_SUFFIX = ".partial"
STALE_AFTER_S = 24 * 3600  # a partial folder of a live process older than this is abandoned too


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_umask(path: Path, mode: int) -> None:
    os.chmod(path, mode & ~_umask())


def jsonable(value):
    """``value`` with tuples as lists and anything else JSON cannot hold as its ``str``."""
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary name in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _chmod_umask(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value, indent: int | None = 2) -> Path:
    """Strict JSON (no NaN / Infinity, which other JSON readers refuse), written atomically."""
    return atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=False) + "\n")


# -- folders ----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(dest: Path) -> list[Path]:
    """Remove ``.DEST.<pid>.<random>.partial`` folders left by a killed run writing ``dest``.

    A folder is stale when the process that made it is gone (or, for a pid that was reused, when it
    is over a day old). Our own live builds and other names are never touched.
    """
    removed = []
    if not dest.parent.is_dir():
        return removed
    prefix = f".{dest.name}."
    for entry in dest.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX) and entry.is_dir()):
            continue
        pid_part = name[len(prefix):].split(".", 1)[0]
        if not pid_part.isdigit():
            continue
        pid = int(pid_part)
        age = time.time() - entry.stat().st_mtime
        if pid == os.getpid() or (_pid_alive(pid) and age < STALE_AFTER_S):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _is_mount_or_cwd(dest: Path) -> bool:
    try:
        resolved = dest.resolve()
    except OSError:
        return False
    return resolved == Path.cwd().resolve() or (dest.exists() and os.path.ismount(resolved)) \
        or resolved == resolved.parent


def check_replaceable(dest: Path, owns: Callable[[Path], bool] | None, what: str, param: str = "out") -> None:
    """Refuse, before any work, a ``dest`` that must not be replaced.

    Args:
        dest: the folder that will receive the output.
        owns: ``owns(dest)`` is true when ``dest`` is an earlier output of the same kind that holds
            nothing else (the caller's rule, e.g. a valid export manifest listing every file);
            ``None`` accepts only a missing or empty folder.
        what: what is written, for the message ("an export", "benchmark results").
        param: the parameter (or flag) naming ``dest``, for the message.

    Raises:
        SubtuneError: ``dest`` is a file, or a non-empty folder that is not recognisably ours.
    """
    if dest.exists() and not dest.is_dir():
        raise SubtuneError(f"{{param}} {dest} is a file; choose a folder name for {what}", param=param)
    if dest.is_dir() and any(dest.iterdir()) and not (owns is not None and owns(dest)):
        raise SubtuneError(f"{{param}} {dest} is a non-empty folder that is not {what} made by subtune-edge "
                           f"(or holds other files too); choose a new or empty folder", param=param)


@contextlib.contextmanager
def staged_dir(dest: str | os.PathLike, owns: Callable[[Path], bool] | None = None, *, what: str = "the output",
               param: str = "out") -> Iterator[Path]:
    """Build a folder's contents in a hidden sibling, then publish them to ``dest`` in one step.

    Yields the staging folder. On a clean exit its contents replace ``dest`` (only if
    :func:`check_replaceable` allowed it, checked before the caller does any work); on an error the
    staging folder is removed and ``dest`` is untouched. Where ``dest`` cannot be renamed (a mount
    point, the working directory) its contents are replaced entry by entry instead.

    Args:
        dest: the folder to publish.
        owns: the caller's rule for "an earlier output of ours, nothing else in it" (see
            :func:`check_replaceable`).
        what: what is written, for messages.
        param: the parameter (or flag) naming ``dest``, for messages.

    Raises:
        SubtuneError: ``dest`` must not be replaced, or its parent cannot be written.
    """
    dest = Path(os.path.abspath(dest))  # "." has no name to stage beside; its absolute form does
    check_replaceable(dest, owns, what, param)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(dest)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX,
                                        dir=dest.parent))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SubtuneError(f"cannot write {{param}} {dest} ({reason}); choose a writable folder",
                           param=param) from exc
    _chmod_umask(staging, 0o777)
    try:
        yield staging
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, dest: Path) -> None:
    if _is_mount_or_cwd(dest):
        _replace_contents(staging, dest)
        return
    if not dest.exists():
        os.replace(staging, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".old", dir=dest.parent))
    try:
        os.replace(dest, old / dest.name)
    except OSError:  # busy (a mount, a bind): fall back to swapping the contents
        shutil.rmtree(old, ignore_errors=True)
        _replace_contents(staging, dest)
        return
    try:
        os.replace(staging, dest)
    except OSError:
        os.replace(old / dest.name, dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _replace_contents(staging: Path, dest: Path) -> None:
    """Swap ``dest``'s entries for ``staging``'s, each by rename (the folder itself stays)."""
    dest.mkdir(exist_ok=True)
    for entry in list(dest.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in staging.iterdir():
        os.replace(entry, dest / entry.name)
