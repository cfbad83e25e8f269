"""One collect at a time per run folder: a lock file holding the holder's pid, host and start time.

Two collects into one folder would both compute every shard (atomic shards keep the data right,
but the compute is paid twice; on shared cluster storage this is an easy mistake). The lock is
``OUTPUT_DIR/.hf_introspect.lock``, created with ``O_EXCL`` (atomic on local filesystems and on
NFSv3+). A lock left by a process that died on this host is taken over with a warning; a lock held
by a live process, or by any process on another host (whose liveness cannot be checked from
here), refuses the run naming the holder. Under ``accelerate launch`` rank 0 takes the lock for
the whole run and the other ranks only learn its outcome: they never block on it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .storage import LOCK_NAME, check_output_dir

logger = logging.getLogger("hf_introspect")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending)."""
    if pid <= 0:  # unreadable lock; and kill(-1, 0) would ask about every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


@dataclass
class RunLock:
    """A held lock; :meth:`release` removes the file (only if it is still ours)."""

    path: Path
    token: str
    created_folder: bool = False  # the folder did not exist: a run refused early leaves no trace

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text(encoding="utf-8")).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass  # already gone (or replaced by a process that took it over): nothing of ours to remove
        if self.created_folder:
            try:
                self.path.parent.rmdir()  # only if empty: the run wrote nothing
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(folder: str | Path, command: str = "") -> RunLock:
    """Take the run folder's lock, creating the folder if needed.

    Raises UserError naming the holder when another live process has it; takes over (with a
    warning) a lock whose process is gone from this host.

    Example:
        >>> import tempfile
        >>> with acquire(tempfile.mkdtemp()) as lock:
        ...     lock.path.name
        '.hf_introspect.lock'
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": command, "token": f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"}
    for _ in range(3):  # a taken-over stale lock may be raced for by another starter: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # removed between our open and read: try again
            if holder.get("host") != me["host"] or _alive(int(holder.get("pid", -1))):
                raise UserError(f"{folder} is in use by another collect ({_describe(holder)}); wait for it, use "
                                f"another --output_dir, or if that process is gone delete {path}")
            _take_over(path, holder)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return RunLock(path, me["token"], created)
    raise UserError(f"could not take the lock {path} (other processes keep taking it); retry")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": -1, "host": socket.gethostname(), "started": "?"}  # half-written by a killed process: stale


def _take_over(path: Path, holder: dict) -> None:
    # Renaming to a name of our own is atomic: of two processes taking over the same stale lock,
    # only one's rename finds the file; the other then retries O_EXCL and meets the winner's lock.
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # another starter took it over first and holds it now: give it back
        os.replace(aside, path)
        return
    aside.unlink(missing_ok=True)
    logger.warning("taking over the lock of a collect that is gone (%s)", _describe(holder))


def _lock_all_ranks(cfg) -> RunLock | None:
    """Rank 0 takes the lock; every rank learns the outcome, so a refusal stops them all (the other
    ranks of the same run never wait on the lock)."""
    from .multi_process import process_state

    state = process_state()
    lock, error = None, None
    if state.is_main_process:
        try:
            lock = acquire(cfg.output_dir, " ".join(sys.argv[:1] + sys.argv[1:])[:300])
        except UserError as exc:
            error = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error is not None:
        raise UserError(error)
    return lock


def holding_run_lock(collect):
    """Decorator: ``collect(cfg, ...)`` runs holding ``cfg.output_dir``'s lock (not for a dry run,
    which writes nothing). The folder is checked first, so a folder that is not a run is refused
    untouched."""

    @functools.wraps(collect)
    def locked(cfg, *args, **kwargs):
        if cfg.dry_run:
            return collect(cfg, *args, **kwargs)
        check_output_dir(cfg.output_dir, cfg.identity(), overwrite=cfg.overwrite, passes=cfg.passes)
        lock = _lock_all_ranks(cfg)
        try:
            return collect(cfg, *args, **kwargs)
        finally:
            if lock is not None:
                lock.release()

    return locked
