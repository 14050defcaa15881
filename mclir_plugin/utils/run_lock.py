"""One live run per experiment folder: ``experiments/<name>.lock``.

BasicSR starts a run whose ``name`` is taken by renaming the existing folder to ``<name>_archived_<time>``, even
while another process is still training in it: that run's later checkpoints then land in the new run's folder. A
run made by ``tools/train.py`` first takes the lock ``experiments/<name>.lock`` (next to the folder, so that the
rename cannot move it), before anything on disk is touched, and refuses to start while another live process holds
it, naming that process. The lock holds the owner's pid, host, start time and command line, and is released
(deleted) at exit.

A lock left by a run that was killed (``kill -9``, a crashed node) does not block ``--auto_resume``: on the same
host it is stale when its process no longer exists (or the pid now belongs to a younger process), and the
operating system drops the ``flock`` held on it with the process. A lock written on *another* host cannot be
checked from here and stops the run with the path to delete once that run is known to have ended.

Only rank 0 takes the lock; the other ranks learn its outcome, so all ranks stop together.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import time
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: pid/host checks only
    fcntl = None


class RunFolderInUse(RuntimeError):
    """Another live run holds the experiment folder."""


_HELD: dict[str, int] = {}  # lock path -> open file descriptor (its flock lives as long as it is open)


def lock_path(opt: dict[str, Any]) -> str:
    """``experiments/<name>.lock`` of the run (next to ``opt['path']['experiments_root']``)."""
    return os.path.normpath(opt['path']['experiments_root']) + '.lock'


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(owner: dict[str, Any]) -> bool:
    """Whether a lock's owner, recorded on this host, is gone (a lock from another host is never called stale)."""
    if owner.get('host') != socket.gethostname():
        return False
    pid = int(owner.get('pid', -1))
    if pid == os.getpid() or pid <= 0 or not _alive(pid):
        return True
    recorded, current = owner.get('proc_start'), _process_start(pid)
    return recorded is not None and current is not None and recorded != current


def describe(owner: dict[str, Any]) -> str:
    started = owner.get('started')
    when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)) if isinstance(started, (int, float)) else '?'
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {when}"
            f" ({owner.get('command', '?')})")


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode('utf-8', 'replace').strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {'pid': '?', 'host': '?', 'command': f'unreadable lock content {text[:80]!r}'}
    return owner if isinstance(owner, dict) else {'pid': '?', 'host': '?', 'command': repr(owner)[:80]}


def acquire(path: str) -> str | None:
    """Take the lock at ``path`` for this process until it exits.

    Returns:
        A note about a stale lock that was taken over, or None.

    Raises:
        RunFolderInUse: Another live process holds it (or a process on another host, which cannot be checked).
    """
    if path in _HELD:
        return None
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        held_elsewhere = not _flock(fd)
        owner = _read(fd)
        if held_elsewhere or (owner is not None and not is_stale(owner)):
            raise RunFolderInUse(_refusal(path, owner, held_elsewhere))
        me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
              'proc_start': _process_start(os.getpid()), 'command': ' '.join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + '\n').encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    _HELD[path] = fd
    atexit.register(release, path)
    return None if owner is None else f'Took over the stale lock {path} of a run that has ended ({describe(owner)}).'


def _flock(fd: int) -> bool:
    """Try an exclusive ``flock``; False when another process holds it. True where locks are unsupported."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # e.g. ENOLCK on a file system without locks: the pid/host check still applies
    return True


def _refusal(path: str, owner: dict[str, Any] | None, held: bool) -> str:
    who = describe(owner) if owner else 'a process that is starting now'
    text = (f'Another run is using this experiment folder: {who} holds {path}. Starting a second run with the same '
            "`name` would mix both runs' checkpoints (BasicSR renames the folder under the running one). Wait for "
            'it to end or stop it, or give this run another `name`.')
    if owner and not held and owner.get('host') != socket.gethostname():
        text += (f' That process runs on another host and cannot be checked from here: if it has ended (a killed '
                 f'job or a crashed node), delete {path} and start again.')
    return text


def release(path: str) -> None:
    """Delete the lock and drop its ``flock`` (registered with ``atexit`` by :func:`acquire`)."""
    fd = _HELD.pop(path, None)
    if fd is None:
        return
    try:
        os.remove(path)
    except OSError:
        pass
    os.close(fd)


def acquire_for_run(opt: dict[str, Any]) -> str | None:
    """Take the run's lock on rank 0 and share the outcome with every rank (all raise the same error).

    Returns:
        Rank 0's note about a stale lock taken over, or None.
    """
    rank, world_size = opt.get('rank', 0), opt.get('world_size', 1)
    outcome: list[Any] = [None, None]
    if rank == 0:
        try:
            outcome[1] = acquire(lock_path(opt))
        except RunFolderInUse as err:
            outcome[0] = str(err)
    if world_size > 1:
        import torch.distributed as dist
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0]:
        raise RunFolderInUse(outcome[0] if rank == 0 else f'Rank {rank}: rank 0 refused to start. {outcome[0]}')
    return outcome[1]


NOTES: list[str] = []  # said before BasicSR's logger exists; logged by :func:`logging_the_notes`


def owning_the_folder(load_resume_state):
    """Wrap BasicSR's ``load_resume_state`` (the first step of ``train_pipeline`` after the options are parsed and
    before any folder is made or renamed): set ``dist_params.timeout``, take the run's lock, then delete the
    ``*.tmp`` files a killed or failed save left in the run's folders (safe now that no other run writes there)."""
    def load(opt):
        from mclir_plugin.utils.checkpoint import remove_stale_temporaries
        from mclir_plugin.utils.distributed import apply_timeout
        from mclir_plugin.utils.resume_lr import read_resume_lr
        read_resume_lr(opt)  # a misspelt value stops a fresh run too, not only its resume
        apply_timeout(opt)
        note = acquire_for_run(opt)
        if note:
            NOTES.append(note)
        if opt.get('rank', 0) == 0:
            removed = remove_stale_temporaries(opt['path'].get('models'), opt['path'].get('training_states'))
            if removed:
                NOTES.append(f'Removed {len(removed)} partial file(s) of an interrupted save: {", ".join(removed)}.')
        return load_resume_state(opt)
    load.__wrapped__ = load_resume_state
    return load


def logging_the_notes(create_train_val_dataloader):
    """Wrap BasicSR's ``create_train_val_dataloader`` (its first call with the logger) to log :data:`NOTES`."""
    def create(opt, logger):
        while NOTES:
            logger.warning(NOTES.pop(0))
        return create_train_val_dataloader(opt, logger)
    create.__wrapped__ = create_train_val_dataloader
    return create
