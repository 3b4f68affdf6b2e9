"""Files that are safe to share: atomic replacement, locks, and output-folder checks.

* :func:`atomic_write` writes to a temporary file in the same folder, then os.replace(): a reader
  (or a resumed run) sees either the old file or the new one, never half of one. The temporary
  file (:func:`temporary`) is named ``.<name>.<pid>.<8 random>.passk_companion.tmp``; a process
  killed mid-write leaves it behind, and :func:`remove_stale_temporaries` deletes those whose
  writer is no longer alive: only files of exactly that form, owned by this user, in the folders
  the caller names (never below them), so a user's own ``.draft.1234.autosave.tmp`` is never
  touched.
* :func:`file_lock` is the one lock: an exclusive ``fcntl.flock`` on a lock file, re-entrant within
  a process and released when the process dies, however it dies. ``wait=True`` (writers of a
  shared file take turns) or ``wait=False`` (:func:`exclusive`: a second run into a folder fails
  at once with :class:`RunLockedError`, naming the holder's pid). A lock file is opened without
  following symbolic links and must be a regular file, so a planted link cannot redirect it.
* :func:`writable_dir` checks an output folder before any work starts, and refuses the filesystem
  root, system folders and the home folder itself; :func:`own_folder` is a folder this program
  names inside one (a trial folder, ``bases/``), refused if it is a symbolic link.
* :func:`regular_file` and :func:`read_regular` refuse what is not a regular file where a file is
  expected (a FIFO, which would block, or ``/dev/zero``, which never ends), and bound what is read.
* :func:`load_yaml_strict` is the one way a YAML file is read: the safe loader, refusing a key
  given twice in one mapping, aliases, and nesting deeper than a bound, each in one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from passk_companion.processes import alive

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "remove_stale_temporaries",
    "file_lock",
    "exclusive",
    "RunLockedError",
    "LockUnavailableError",
    "writable_dir",
    "own_folder",
    "regular_file",
    "open_regular",
    "read_regular",
    "temporary",
    "load_yaml_strict",
]

TEMP_SUFFIX = ".passk_companion.tmp"
# what temporary() creates: .<name>.<pid>.<mkstemp's 8 characters>.passk_companion.tmp[<suffix>]
_TEMP = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.passk_companion\.tmp(\.ipynb)?$")


def temporary(path: str | os.PathLike, suffix: str = "") -> tuple[int, Path]:
    """A new temporary file next to `path` (created 0600, open): (descriptor, path). Its name is
    the one form :func:`remove_stale_temporaries` deletes once the writer has died."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX + suffix
    )
    return fd, Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary binary file next to `path`, then move it into place (a
    symbolic link at `path` is replaced, never written through). An OSError (a full disk) names
    the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary(path)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace `path` with `text` (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`temporary` whose writing process has died (a kill
    during a write leaves them) in each of `folders` (not in their subfolders): regular files of
    exactly that name form, owned by this user. Files of live writers, and every other file,
    are kept. Returns the files removed."""
    removed = []
    for folder in map(Path, folders):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for path in folder.glob(f".*{TEMP_SUFFIX}*"):
            match = _TEMP.match(path.name)
            if not match:
                continue
            try:
                info = path.lstat()
            except OSError:
                continue
            mine = info.st_uid == os.getuid() and stat.S_ISREG(info.st_mode)
            if mine and not alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class RunLockedError(RuntimeError):
    """Another process holds the lock (of a run folder)."""


class LockUnavailableError(ValueError):
    """A lock file cannot be created because its folder is not writable (read-only)."""


_HELD: dict[Path, list] = {}  # lock file -> [file descriptor, depth]


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file `path` (created 0644 if missing), refusing symbolic links
    and anything that is not a regular file (a FIFO, a device, a folder)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: refusing to use it as a lock") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LockUnavailableError(
                f"cannot create the lock file {path} ({err.strerror}): its folder is read-only"
            ) from None
        raise ValueError(f"cannot open the lock file {path} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file: refusing to use it as a lock")
    return fd


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the file `path` (created if needed) for the block.

    wait=True waits for another holder; wait=False raises RunLockedError at once, naming the
    holder's pid (which the holder writes into the file). Re-entrant within one process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = path.parent.resolve() / path.name
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunLockedError(
                f"another run is using {path.parent} (pid {holder}); wait for it to finish or "
                "choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder` (created if needed) for one run: file_lock(<folder>/.lock, wait=False)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock", wait=False):
        yield folder


# Folders that are never an output folder: these and everything inside them ...
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                 "/run", "/sbin", "/sys", "/usr", "/var/cache", "/var/lib", "/var/log",
                 "/var/mail", "/var/spool")  # fmt: skip
_SYSTEM_TREE_EXCEPTIONS = ("/dev/shm",)  # ... except inside these (shared memory is scratch space)
# ... and these themselves (a folder of one's own inside them is fine)
_SYSTEM_ROOTS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var",
                 "/var/tmp", "/dev/shm")  # fmt: skip


def _system_folder(folder: Path) -> str | None:
    """The system folder that `folder` (resolved) is or lies in, if any; its home folder too."""
    real = Path(os.path.realpath(folder))
    text = str(real)
    if text in _SYSTEM_ROOTS or real == Path(os.path.realpath(Path.home())):
        return text
    for tree in _SYSTEM_TREES:
        inside = text == tree or text.startswith(tree + "/")
        if inside and not any(text.startswith(e + "/") for e in _SYSTEM_TREE_EXCEPTIONS):
            return tree
    return None


def writable_dir(
    path: str | os.PathLike | None, flag: str = "--out", *, create: bool = True
) -> Path:
    """`path` as a folder we can write into (created if missing, unless create=False);
    ValueError naming `flag` if it is empty, is a file, is (or lies in) a system folder (``/``,
    ``/etc``, ``/usr``, the home folder itself ...: :func:`_system_folder`), does not exist
    (create=False), or cannot be written."""
    if path is None or str(path).strip() == "":
        raise ValueError(f"{flag} must name a folder, got an empty string")
    folder = Path(path)
    system = _system_folder(folder)
    if system is not None:
        raise ValueError(
            f"{flag} {folder} is {'in ' if system != os.path.realpath(folder) else ''}the system "
            f"or home folder {system}: name a folder of its own for the output"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} exists and is not a folder")
    if not create and not folder.is_dir():
        raise ValueError(f"{flag} {folder} does not exist")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {folder} is not writable ({err.strerror or err})") from None
    return folder


def own_folder(parent: str | os.PathLike, name: str, what: str = "folder") -> Path:
    """`parent/name`, a folder this program names inside an output folder (a trial folder,
    ``bases``), created if missing. ValueError naming it unless `name` is one plain path
    component (no separator, not ``.`` or ``..``) and the folder is a real folder, not a
    symbolic link (which would send our writes elsewhere)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} name {name!r} is not a plain folder name")
    folder = Path(parent) / name
    if folder.is_symlink():
        raise ValueError(f"{what} {folder} is a symbolic link: refusing to write through it")
    try:
        folder.mkdir(exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{what} {folder} exists and is not a folder") from None
    if folder.is_symlink() or not folder.is_dir():
        raise ValueError(f"{what} {folder} is not a folder of its own: refusing to use it")
    return folder


def regular_file(path: str | os.PathLike, what: str, *, must_exist: bool = True) -> Path:
    """`path` if it is a regular file (or, with must_exist=False, does not exist yet); ValueError
    naming `what` for a folder, a FIFO, a device (``/dev/zero``) or a socket. Symbolic links are
    followed: a link to a regular file is one."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise ValueError(f"{what} {path} does not exist") from None
        if path.is_symlink():
            raise ValueError(f"{what} {path} is a dangling symbolic link") from None
        return path
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path} is not a regular file ({_kind(info.st_mode)})")
    return path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def open_regular(path: str | os.PathLike, what: str, *, follow: bool = True) -> IO[bytes]:
    """`path` opened for binary reading if it is a regular file: ValueError naming `what`
    otherwise (with follow=False, also if `path` itself is a symbolic link). Opened without
    blocking, so a FIFO is refused instead of waiting for a writer."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise ValueError(f"{what} {path} is a symbolic link: not read") from None
        raise ValueError(f"cannot read {what} {path} ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{what} {path} is not a regular file ({_kind(mode)})")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The contents of the regular file `path` (:func:`open_regular`), at most `max_bytes`:
    ValueError naming `what` and the limit if it holds more."""
    with open_regular(path, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path} is larger than {max_bytes} bytes: refusing to read it")
    return data


MAX_YAML_BYTES = 1_000_000  # a parameter file or a pre-registration is a few kilobytes
MAX_YAML_DEPTH = 64  # nested mappings and lists; deeper input is refused before recursion runs out
MAX_YAML_NODES = 1_000_000  # values in one document (a grid file's lists are the largest)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping, aliases (``*name``),
    nesting deeper than MAX_YAML_DEPTH and more than `max_nodes` values."""

    _depth = 0
    _nodes = 0
    max_nodes = MAX_YAML_NODES

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", self.peek_event().start_mark
            )
        self._nodes += 1
        if self._nodes > self.max_nodes:
            raise yaml.composer.ComposerError(
                None, None, f"more than {self.max_nodes} values", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,
                )  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:  # noqa: D102
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters is too long",
                node.start_mark,
            ) from None  # fmt: skip

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"duplicate key {key!r} at line {line} (first given at line "
                            f"{seen[key]})", key_node.start_mark,
                        )  # fmt: skip
                    seen[key] = line
                except TypeError:  # an unhashable key: construct_mapping names it
                    continue
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def load_yaml_strict(
    path_or_text: str | os.PathLike,
    what: str = "YAML file",
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """The object a YAML document holds, read with the safe loader and strictly: a key given
    twice in one mapping, an alias, nesting deeper than MAX_YAML_DEPTH or more than `max_nodes`
    values is a ValueError of one line naming the source, the key and the line.

    A path (os.PathLike) is read as a regular file of at most `max_bytes` (:func:`read_regular`:
    a FIFO or ``/dev/zero`` is refused), as UTF-8; a str is the YAML text itself. `what` names the
    source in the errors ("pre-registration", "parameter file")."""
    if isinstance(path_or_text, str):
        source, text = what, path_or_text
    else:
        source = f"{what} {os.fspath(path_or_text)}"
        raw = read_regular(path_or_text, what, max_bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"cannot read {source}: not UTF-8 ({err.reason})") from None
    try:
        loader = type("_Bounded", (_StrictLoader,), {"max_nodes": max_nodes})
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        if "duplicate key" in str(problem):
            where = ""
        raise ValueError(f"cannot read {source}: {' '.join(str(problem).split())}{where}") from None
    except RecursionError:
        raise ValueError(f"cannot read {source}: nested too deeply") from None
