"""A stalled rank ends a distributed run with a message, instead of hanging every other rank.

``dist_params.timeout`` (minutes, default :data:`DEFAULT_TIMEOUT_MIN`) bounds how long a collective operation
(DDP's gradient all-reduce, the loss reduction, the non-finite check, the gather of random states at a save) waits
for the other ranks. It must exceed the longest time a rank can legitimately run ahead: the validation, which rank 0
runs alone while the other ranks wait in the next iteration's all-reduce. Fractions are allowed (0.5 = 30 s).

When it expires, gloo raises an error on the waiting ranks; :func:`naming_the_stall` turns it into a
:class:`StalledRankError` naming this rank, the iteration it was in and the timeout. NCCL aborts the process from
its watchdog thread instead (torch's own message, "Watchdog caught collective operation timeout"); the iteration is
then the last one in the log.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
from typing import Any, Iterator

from mclir_plugin.utils.option_schema import Number

DEFAULT_TIMEOUT_MIN = 30.0  # torch's default for gloo (NCCL's is 10): validation on rank 0 must fit in it

TIMEOUT = Number(low=0, low_open=True, note=f'minutes a collective operation waits for a stalled rank; default '
                                             f'{DEFAULT_TIMEOUT_MIN:g}')

_STATE: dict[str, Any] = {'iteration': None, 'timeout_min': None}


class StalledRankError(RuntimeError):
    """A collective operation timed out or lost a peer: another rank stalled or died."""


def read_timeout(opt: dict[str, Any]) -> float:
    """``dist_params.timeout`` in minutes, checked: a finite number > 0. Defaults to :data:`DEFAULT_TIMEOUT_MIN`."""
    value = (opt.get('dist_params') or {}).get('timeout', DEFAULT_TIMEOUT_MIN)
    if value is None:
        value = DEFAULT_TIMEOUT_MIN
    return TIMEOUT(value, 'dist_params.timeout')


def apply_timeout(opt: dict[str, Any]) -> float | None:
    """Set the default process group's timeout to ``dist_params.timeout`` (a no-op without torch.distributed).

    Called once the group exists, so the start-up rendezvous keeps torch's longer default (ranks may start
    minutes apart on a busy cluster). Returns the timeout in minutes, or None when not distributed.
    """
    minutes = read_timeout(opt)
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    timeout = datetime.timedelta(minutes=minutes)
    if hasattr(dist, 'set_timeout'):
        dist.set_timeout(timeout)
    else:  # torch < 2.6
        from torch.distributed import distributed_c10d
        distributed_c10d._set_pg_timeout(timeout)
    _STATE['timeout_min'] = minutes
    return minutes


def note_iteration(iteration: int) -> None:
    """Remember the iteration this rank is in (BasicSR's loop calls ``update_learning_rate`` with it)."""
    _STATE['iteration'] = iteration


def stall_message(err: BaseException) -> str:
    """The message of a collective that failed on this rank: rank, iteration, timeout, what to check."""
    import torch.distributed as dist
    rank, world_size = dist.get_rank(), dist.get_world_size()
    iteration = _STATE['iteration']
    where = f'in iteration {iteration}' if iteration else 'before the first iteration'
    others = 'rank 1' if world_size == 2 and rank == 0 else 'rank 0' if world_size == 2 else \
        f'one of the other {world_size - 1} ranks (those that did not report this error)'
    timeout = _STATE['timeout_min']
    limit = f'dist_params.timeout = {timeout:g} min' if timeout else 'the process group timeout'
    return (f'Rank {rank} of {world_size}: a collective operation {where} failed: {others} did not answer within '
            f'{limit}, so it stalled (stopped, swapped out, stuck in I/O) or died. Its own log or exit status says '
            'which; resume with --auto_resume once it is fixed. If a slow validation on rank 0 caused it, raise '
            f'dist_params.timeout. ({type(err).__name__}: {str(err).strip()[:400]})')


@contextlib.contextmanager
def naming_the_stall() -> Iterator[None]:
    """Turn a distributed backend error (gloo timeout, a peer that died) into :class:`StalledRankError`."""
    try:
        yield
    except StalledRankError:
        raise
    except RuntimeError as err:
        if not _is_backend_error(err):
            raise
        message = stall_message(err)
        logging.getLogger('basicsr').error(message)  # into the run's log file too
        raise StalledRankError(message) from err


def _is_backend_error(err: BaseException) -> bool:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return False
    backend_error = getattr(dist, 'DistBackendError', None)
    if backend_error is not None and isinstance(err, backend_error):
        return True
    text = str(err)
    return any(mark in text for mark in ('Timed out', 'timed out', 'Connection closed by peer', 'Connection reset'))


def noting_iteration(update_learning_rate):
    """Wrap ``BaseModel.update_learning_rate``, which BasicSR's loop calls first in every iteration."""
    def update(self, current_iter, warmup_iter=-1):
        note_iteration(current_iter)
        return update_learning_rate(self, current_iter, warmup_iter)
    update.__wrapped__ = update_learning_rate
    return update
