"""Writing checkpoints so that a file on disk is either complete or absent, and a failed write says why."""
from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch

logger = logging.getLogger('basicsr')
TMP_SUFFIX = '.tmp'
_STATE_NAME = re.compile(r'(\d+)\.state')  # training_states/<iter>.state, as BasicSR names them


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, file size limit); its partial file is removed."""


class _RecordingFile:
    """A binary file whose write errors are kept: torch's zip writer replaces them by "unexpected pos"."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``<path>.tmp``, flush it to disk, then rename it over ``path``.

    A process killed mid-save leaves at most a stale ``.tmp`` file, never a truncated checkpoint under the real
    name (``os.replace`` is atomic on POSIX and Windows within one file system). A write that fails (disk full,
    permissions, file size limit) removes its partial ``.tmp`` file and raises :class:`CheckpointWriteError`
    naming the path and the operating system's error; ``path`` keeps its previous content, if any.
    """
    tmp = f'{path}{TMP_SUFFIX}'
    try:
        with open(tmp, 'wb') as f:
            recorder = _RecordingFile(f)
            try:
                torch.save(obj, recorder)
                f.flush()
                os.fsync(f.fileno())
            except (OSError, RuntimeError) as err:
                raise recorder.error or err
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        _remove_quietly(tmp)
        previous = f'{path!r} keeps its previous content' if os.path.exists(path) else f'{path!r} was not written'
        reason = f'{err.strerror} (errno {err.errno})' if isinstance(err, OSError) and err.strerror else \
            f'{type(err).__name__}: {err}'
        error = CheckpointWriteError(f'Cannot write the checkpoint {path!r}: {reason}. The partial file was removed '
                                     f'and {previous}. Free space on that file system (or fix its permissions), '
                                     'then resume.')
        error.errno = getattr(err, 'errno', None)
        raise error from err


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # e.g. a read-only file system: say so, the original error matters more
        logger.warning(f'Could not remove the partial file {path!r}: {err}.')


def remove_stale_temporaries(*folders: str) -> list[str]:
    """Delete the ``*.tmp`` files a killed or failed save left in ``folders``; return their paths.

    Only safe when no other process writes there: call it once the run holds its folder
    (:mod:`mclir_plugin.utils.run_lock`).
    """
    removed = []
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(TMP_SUFFIX) and os.path.isfile(os.path.join(folder, name)):
                _remove_quietly(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


def newest_training_state(state_dir: str) -> str | None:
    """The path of the newest complete training state in ``state_dir``, or None when there is none.

    Complete means a finished ``<iter>.state`` file: :func:`atomic_torch_save` writes it under that name only once
    the write is done, so a ``<iter>.state.tmp`` left by a killed save is never taken, nor is any other name
    (``latest.state``, ``notes.txt``) or a folder. Newest means the highest iteration, compared as a number
    (``10.state`` after ``9.state``). The one rule of ``--auto_resume`` and of every command that looks for a
    run's resume point.

    Args:
        state_dir: A run's ``training_states`` folder (``opt['path']['training_states']``); a folder that does
            not exist holds none.
    """
    if not os.path.isdir(state_dir):
        return None
    found = [(int(m[1]), name) for name in os.listdir(state_dir) if (m := _STATE_NAME.fullmatch(name))
             and os.path.isfile(os.path.join(state_dir, name))]
    return os.path.join(state_dir, max(found)[1]) if found else None


def is_damaged_file_error(err: BaseException) -> bool:
    """Whether ``torch.load`` failed because the file is truncated or not a torch file (not missing, not a
    mismatch with the network)."""
    import pickle
    import zipfile
    if isinstance(err, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)):
        return True
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # e.g. EINVAL seeking past a cut end
        return True
    text = str(err)
    return any(mark in text for mark in ('PytorchStreamReader', 'failed finding central directory', 'Ran out of input',
                                         'unexpected EOF', 'invalid load key'))


def load_weights_file(path: str, what: str, fix: str, **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)`` whose failure on a truncated or damaged file names ``what``, the path, the
    file's size and ``fix`` (what to do), instead of torch's bare "PytorchStreamReader failed reading zip archive"."""
    try:
        return torch.load(path, **kwargs)
    except Exception as err:
        if not is_damaged_file_error(err):
            raise
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise RuntimeError(f'Cannot read {what} {path!r} ({size} bytes): the file is truncated or damaged '
                           f'({type(err).__name__}: {str(err).splitlines()[0][:200] or "empty"}). {fix}') from err
