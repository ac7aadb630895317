"""Writing a run's files without losing one: atomic writes (a crash leaves the old file or the
new one, never half of one), temporaries of killed writers cleaned up, a full disk reported with
the path, and the lock that keeps two trainings out of one run folder.

A temporary is named ``.tmp-PID-START-XXXXXXXX.EXT`` beside its target (PID and START: the
writing process and its start time), so that a later save into the folder can tell one left by
a process that is gone (stale: removed, and said) from one being written right now.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile

import numpy as np

_TEMP = re.compile(r"^\.tmp-(?:(\d+)-(\d+)-)?[a-z0-9_]{8}\.\w+$")
OLD_TEMP_AGE = 3600.0  # seconds: a temporary without a process in its name (older fastcnn) is stale after this


class WriteError(OSError):
    """A file could not be written (disk full, no permission...); the message names it."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot (Linux); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def process_alive(pid: int, start: int = 0) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``start`` when both are known
    (a recycled pid, in a restarted container say, is another process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OverflowError:
        return False
    now = process_start(pid)
    return not (start and now and now != start)


def _stale(name: str, directory: str) -> bool:
    match = _TEMP.match(name)
    if not match:
        return False
    if match.group(1) is None:  # no writer named: stale once old
        try:
            return time.time() - os.path.getmtime(os.path.join(directory, name)) > OLD_TEMP_AGE
        except OSError:
            return False
    pid, start = int(match.group(1)), int(match.group(2))
    if pid == os.getpid() and (not start or start == process_start(pid)):
        return False  # ours (another thread's save)
    return not process_alive(pid, start)


def remove_stale_temporaries(directory) -> list[str]:
    """Remove the temporaries of our naming in ``directory`` that no live process is writing;
    each one removed is said on stderr.  Returns their names."""
    directory = os.fspath(directory)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if not _stale(name, directory):
            continue
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
        print(f"removed {path} ({size / 1e6:.1f} MB), a temporary file left by an interrupted save",
              file=sys.stderr)
    return removed


def atomic_write(path, write, binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` into a temporary beside it, synced, then renamed
    over it.  Stale temporaries in the folder go first.  An OSError becomes a WriteError that
    names the path (the disk being full, say)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        remove_stale_temporaries(directory)
        prefix = f".tmp-{os.getpid()}-{process_start(os.getpid())}-"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=os.path.splitext(path)[1] or ".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno, exc.strerror or str(exc), path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(path, arrays: dict) -> None:
    """Named arrays to an .npz file (weights, a checkpoint), written atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path) -> dict:
    """The arrays of an .npz weights or checkpoint file; ValueError naming the file when it is
    not one (a .npy array, another kind of file, a truncated archive, pickled objects, no arrays)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a weights file")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise ValueError(f"{path} is a single NumPy array (.npy), not an .npz weights file "
                         f"(save_weights and fastcnn train write .npz archives of named arrays)")
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive's first record, or an empty one's
        raise ValueError(f"{path} is not an .npz weights file ({'empty' if not head else 'not a zip archive'})")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise ValueError(f"{path} is not a readable .npz weights file: {exc}") from exc
        raise ValueError(f"{path} holds pickled Python objects, which weights files never do; "
                         f"refused (loading them could run code)") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable .npz weights file (corrupt or truncated): {exc}") from exc
    if not arrays:
        raise ValueError(f"{path} holds no arrays: not a weights file")
    return arrays


def strict_json(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps_json(value, **kwargs) -> str:
    """Strict JSON text (non-finite numbers written as null)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


class RunLockHeld(Exception):
    """Another live process trains into this run folder."""


class RunLock:
    """``with RunLock(folder):`` holds ``folder/train.lock`` (an exclusive flock, which the kernel
    releases when the holder dies: a lock left by a killed process is taken over, and said); its
    content names the holder for the message of a refused second training."""
    NAME = "train.lock"

    def __init__(self, folder):
        self.path = os.path.join(os.fspath(folder), self.NAME)
        self.fd = None

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.load(f)
            return f"process {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> None:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockHeld(f"{os.path.dirname(self.path)} is being trained into by {self._holder()} "
                                  f"(it holds {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file we locked was removed by its last holder meanwhile: again
        left = os.read(fd, 4096)
        if left.strip():
            print(f"note: took over {self.path}, left by {self._holder()}, which is no longer running",
                  file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
