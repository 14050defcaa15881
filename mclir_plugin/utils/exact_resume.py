"""Exact resume: the random states and the position inside the epoch, saved with every training state.

BasicSR 1.4.2 saves the epoch and iteration but no random state, and on resume it restarts the interrupted epoch
from its first batch. So a resumed run sees other crops, other flips and other dropout draws than the run it
continues. This module closes the gap without changing BasicSR's loop:

* One :class:`TrainProgress` per training run holds where training stands inside the epoch. Nothing here is
  global: ``compat`` wraps BasicSR's ``create_train_val_dataloader`` and ``build_model`` so that the run's loader
  and model share the run's object (:func:`resumable_train_loader` creates it and leaves it in the options dict,
  :func:`take_progress` takes it out for the model), and a second run in the same process starts from a fresh one.
* :class:`ResumableLoader` wraps the training loader. It counts the batches handed out in the current epoch and
  records the random states at the moment the epoch's iterator is created.
* A training state (``MCLIRModel.save_training_state``) stores, per rank, the random states at the save
  (torch CPU and CUDA, numpy, python) and at the start of the epoch, plus the number of batches consumed.
* On resume (:meth:`TrainProgress.schedule_resume`) the loader restores the epoch-start states, creates the
  iterator (so workers get the same seeds), *replays* the consumed batches (loading and discarding them, which
  reproduces every worker's random stream), then restores the states of the save. Replaying costs at most one
  epoch of data loading.

Caveats up front: ``persistent_workers: true`` keeps worker random streams across epochs, which a fresh process
cannot rebuild, so resume is exact only without it; a resume with another world size or batch size skips the replay
(with a warning). Validation runs inside :func:`preserved_rng`, so validating does not change training.
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Iterator

import numpy as np
import torch

logger = logging.getLogger('basicsr')


def capture_rng() -> dict[str, Any]:
    """All random states of this process, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        'torch': torch.random.get_rng_state(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': {'version': py_state[0], 'state': torch.tensor(py_state[1], dtype=torch.int64),
                   'gauss_next': py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng`'s states."""
    torch.random.set_rng_state(state['torch'].cpu())
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    py_state = state['python']
    random.setstate((py_state['version'], tuple(int(v) for v in py_state['state'].tolist()), py_state['gauss_next']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation, say) without changing any random state outside it."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


class TrainProgress:
    """Where one training run stands inside the current epoch, shared by its loader and its model.

    The run's :class:`ResumableLoader` writes it (batches handed out, random states at the epoch start), the
    model's ``save_training_state`` reads it, and a resume arms it (:meth:`schedule_resume`) for the loader's next
    epoch iterator. Each run makes its own, so nothing carries over to a later run in the same process.
    """

    def __init__(self) -> None:
        self.epoch_start_rng: dict[str, Any] | None = None
        self.batches_in_epoch = 0
        self.batch_size: int | None = None
        self.pending: dict[str, Any] | None = None  # set by a resume, used by the next epoch's iterator

    def state(self) -> dict[str, Any]:
        """This rank's part of a training state."""
        return {'rng': capture_rng(), 'epoch_start_rng': self.epoch_start_rng,
                'batches_in_epoch': self.batches_in_epoch, 'batch_size': self.batch_size}

    def schedule_resume(self, rank_state: dict[str, Any]) -> bool:
        """Arm the replay for the next epoch iterator from this rank's saved progress; False if it cannot be exact.

        Args:
            rank_state: This rank's entry of a training state's ``progress`` list (:meth:`state` at the save).
        """
        if rank_state.get('epoch_start_rng') is None:
            logger.warning('Exact resume: the checkpoint was saved before any epoch started; random states '
                           'restored only.')
            restore_rng(rank_state['rng'])
            return False
        if self.batch_size is not None and rank_state.get('batch_size') not in (None, self.batch_size):
            logger.warning(f"Exact resume skipped: batch size changed ({rank_state['batch_size']} -> "
                           f'{self.batch_size}); the interrupted epoch restarts from its first batch.')
            return False
        self.pending = rank_state
        return True


class _CountingIterator:
    """Counts the batches it hands out; with ``pending`` set, replays them first (see :class:`ResumableLoader`)."""

    def __init__(self, iterator: Iterator, progress: TrainProgress, pending: dict[str, Any] | None) -> None:
        self.iterator, self.progress, self.pending = iterator, progress, pending

    def __iter__(self) -> '_CountingIterator':
        return self

    def __next__(self):
        if self.pending is not None:
            pending, self.pending, self.progress.pending = self.pending, None, None
            for _ in range(pending['batches_in_epoch']):
                next(self.iterator, None)
                self.progress.batches_in_epoch += 1
            restore_rng(pending['rng'])
            logger.info(f"Exact resume: replayed {pending['batches_in_epoch']} batch(es) of the interrupted epoch "
                        'and restored the random states of the checkpoint.')
        batch = next(self.iterator)
        self.progress.batches_in_epoch += 1
        return batch


class ResumableLoader:
    """A training DataLoader that records its epoch position and can replay it after a resume.

    The replay happens at the first batch drawn from an iterator, not when the iterator is made: BasicSR's
    prefetcher makes one iterator in its constructor and throws it away at the epoch's ``reset()``. Every other
    attribute (``dataset``, ``sampler``, ``batch_size``...) is the wrapped loader's.
    """

    def __init__(self, loader, progress: TrainProgress | None = None) -> None:
        """Wrap ``loader``; ``progress`` is the run's :class:`TrainProgress` (Defaults to a new one)."""
        self.loader = loader
        self.progress = progress = TrainProgress() if progress is None else progress
        progress.batch_size = getattr(loader, 'batch_size', None)
        if getattr(loader, 'persistent_workers', False):
            logger.warning('persistent_workers is on: worker random streams span epochs, so a resumed run cannot '
                           'reproduce them exactly.')

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self) -> _CountingIterator:
        pending = self.progress.pending
        if pending is not None:  # the iterator draws the workers' base seed: draw it from the epoch-start state
            restore_rng(pending['epoch_start_rng'])
        self.progress.epoch_start_rng = capture_rng()
        self.progress.batches_in_epoch = 0
        return _CountingIterator(iter(self.loader), self.progress, pending)


# The key under which the run's progress travels in the options dict, from the loader to the model (BasicSR's
# pipeline passes that one dict to both); popped before the model is built, so no option dump or copy sees it.
_OPT_KEY = '_mclir_train_progress'


def resumable_train_loader(opt: dict[str, Any], loader) -> ResumableLoader:
    """Wrap the run's training ``loader`` in a :class:`ResumableLoader` with a new :class:`TrainProgress`, and put
    that progress in ``opt``, where :func:`take_progress` finds it for the same run's model."""
    wrapped = ResumableLoader(loader)
    opt[_OPT_KEY] = wrapped.progress
    return wrapped


def take_progress(opt: dict[str, Any]) -> TrainProgress | None:
    """Remove the run's progress from ``opt`` and return it (None when no training loader was made for ``opt``).

    Called before the model is built: ``build_model`` deep-copies the options, and the model must get this very
    object, not a copy.
    """
    return opt.pop(_OPT_KEY, None)
