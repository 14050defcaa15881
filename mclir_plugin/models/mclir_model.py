"""MCLIRModel: a BasicSR model (SR, GAN, Real-ESRGAN, video), trained with history negatives and the SPN loss.

``model_type: MCLIRModel`` builds the model named by ``mclir.base_model`` (``SRModel``, ``SwinIRModel``,
``SRGANModel``, ``ESRGANModel``, ``RealESRGANModel_basicsr``, ``VideoRecurrentModel``, ...) as a subclass that keeps
the base model's own training step. The SPN term enters through the criterion that step already calls:

1. after the base model's ``init_training_settings``, ``cri_pix`` (built from ``train.pixel_opt``: ``SPNLoss`` or
   a peer loss) is wrapped in a :class:`~mclir_plugin.losses.contrastive_criterion.ContrastiveCriterion`, bound to
   each batch's input (``lq`` after the base model's ``feed_data``) and iteration; called as
   ``cri_pix(output, gt)`` it runs the negatives on the same ``lq`` and returns ``l_rec - l_neg``;
2. ``optimize_parameters`` runs the base model's ``optimize_parameters`` inside a step context (autocast,
   fp16 loss scaling, ``grad_clip``, the non-finite guard on every optimizer step);
3. then the criterion's terms join the log (the base model's ``l_pix``/``l_g_pix`` shows the reconstruction term,
   plus ``l_neg``, the amount subtracted, and ``l_neg_ratio = l_neg / l_pix``), and the negatives due at this
   iteration are refreshed from the raw ``net_g`` (never ``net_d``, never the EMA copy).

For SRModel this is the official step order (``tests/models/test_mclir_model.py`` checks it against
:mod:`mclir_plugin.models.official_step`). GAN models: the SPN term is part of the generator's loss only; on iterations where
the base step does not update the generator (``net_d_iters``/``net_d_init_iters``) the criterion is not called and
nothing is logged for it. The negatives, the criterion's calibrated ``neg_weight`` and Real-ESRGAN's training-pair
queue are written into every training state (``training_states/<iter>.state``, keys ``mclir``, ``neg_weight``,
``realesrgan_queue``) with the random states and the epoch position (key ``progress``, :mod:`mclir_plugin.utils.exact_resume`),
and restored on resume, so a resumed run continues exactly; checkpoints are written atomically. ``net_d`` and its
optimizer are saved and restored by BasicSR itself (``net_d_<iter>.pth``; the training state's optimizer list).
Validation leaves the random states untouched.

Refused before training, with the reason: a base model that is not a BasicSR ``BaseModel``, and one that builds
no ``cri_pix`` from ``train.pixel_opt`` (its step would never call the SPN term).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections import OrderedDict
from typing import Any, Iterator

import torch
from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from mmengine.registry import HOOKS

from mclir_plugin.utils.checkpoint import CheckpointWriteError, atomic_torch_save
from mclir_plugin.compat import resolve_model_type
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook
from mclir_plugin.hooks.history_negatives import HistoryNegatives
from mclir_plugin.losses.contrastive_base import ContrastiveLoss
from mclir_plugin.losses.contrastive_criterion import ContrastiveCriterion, LambdaCalibration, all_ranks_agree
from mclir_plugin.utils.option_schema import Boolean, Choice, Integer, Number, Optional, OptionError, check_options
from mclir_plugin.utils.option_imports import import_option_modules
from mclir_plugin.utils.precision import refuse_deformable_convs
from mclir_plugin.utils.options import accepted_kwargs, check_call_kwargs, check_keys, naming_the_file
from mclir_plugin.utils.exact_resume import TrainProgress, preserved_rng

MCLIR_KEYS = ('base_model', 'hook', 'amp', 'neg_every', 'neg_batch_fraction', 'neg_per_step', 'max_nonfinite_steps',
              'visualize', 'grad_clip', 'import_modules')
STATE_KEY = 'mclir'
QUEUE_KEY = 'realesrgan_queue'
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class StepGuard:
    """What the step context saw: per optimizer step, whether it was skipped as non-finite."""

    def __init__(self) -> None:
        self.pending: list[bool] = []  # finiteness of the losses back-propagated since the last optimizer step
        self.skipped: list[torch.optim.Optimizer] = []
        self.stepped = False


class MCLIRMixin:
    """Training extension mixed in front of a BasicSR model class (see the module docstring)."""

    negative_hook: HistoryNegativeHook
    cri_pix: ContrastiveCriterion
    train_progress: TrainProgress  # the run's epoch position and random states (exact resume), see below

    def init_training_settings(self) -> None:
        logger = get_root_logger()
        self.negative_hook = build_negative_hook(self.opt)  # option errors first, before anything is built
        check_spn_pixel_opt(self.opt)
        self.step_options = read_step_options(self.opt.get('mclir') or {})
        self.amp_dtype = self.step_options.amp_dtype
        self.nonfinite_in_a_row = 0
        # the newest complete training state: named when non-finite losses stop the run (none are written in a streak)
        self.last_checkpoint: str | None = self.opt['path'].get('resume_state')
        # this model's own until the training pipeline hands it the one its train loader writes (compat's
        # build_model wrapper): saves and resumes then follow that loader, and no other run shares it
        self.train_progress = TrainProgress()
        super().init_training_settings()
        refuse_cpu_amp_with_deformable_convs(self.net_g, self.amp_dtype, self.device)
        # fp16 needs loss scaling; bf16 has fp32's range and does not. Disabled, the scaler is a pass-through.
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        loss = getattr(self, 'cri_pix', None)
        if loss is None:
            raise TypeError(f'mclir.base_model {type(self).__mro__[2].__name__} built no cri_pix from '
                            'train.pixel_opt, so its training step would never compute the SPN term; MCLIRModel '
                            'wraps models whose step calls cri_pix (SRModel, GAN and video models).')
        if not isinstance(loss, ContrastiveLoss):
            raise TypeError(f'train.pixel_opt built {type(loss).__name__}, not a ContrastiveLoss (SPNLoss, '
                            'ContrastRatioLoss, InfoNCELoss).')
        vgg = loss.vgg
        (logger.warning if vgg.weights_source.startswith('RANDOM') else logger.info)(
            f'{type(loss).__name__}: {vgg.vgg_type} {vgg.weights_source}')
        bank = self.negative_hook.bank
        if bank.seed is None:
            bank.seed = _shared_seed(self.opt.get('manual_seed', 0))
        network_opt = copy.deepcopy(self.opt['network_g'])
        bank.build(self.get_bare_model(self.net_g), fresh_init=lambda: build_network(network_opt))
        logger.info('MCLIR: ' + bank.describe())
        self.cri_pix = ContrastiveCriterion(loss, bank, neg_every=self.step_options.neg_every,
                                            neg_batch_fraction=self.step_options.neg_batch_fraction,
                                            dist=bool(self.opt['dist']), source=lambda: self.get_bare_model(self.net_g),
                                            neg_per_step=self.step_options.neg_per_step)

    @property
    def calibration(self) -> LambdaCalibration | None:
        """The running ``neg_weight: auto`` calibration, None once done (or without it)."""
        return self.cri_pix.calibration

    def feed_data(self, data: dict) -> None:
        super().feed_data(data)  # (video validation's in-place squeeze on CPU: compat feeds it copies)
        if isinstance(getattr(self, 'cri_pix', None), ContrastiveCriterion) and hasattr(self, 'lq'):
            self.cri_pix.bind(self.lq)  # as the base model left it (Real-ESRGAN degrades and queues here)

    def optimize_parameters(self, current_iter: int) -> None:
        """The base model's own step inside :meth:`step_context`, then the logs and the negatives' refresh."""
        self.cri_pix.bind(self.lq, current_iter)
        with self.step_context() as guard:
            super().optimize_parameters(current_iter)
        terms = self.cri_pix.log_terms()
        if terms:
            self.log_dict = merge_terms(self.log_dict, self.reduce_loss_dict(OrderedDict(terms)))
        if guard.skipped:
            return self._skip_nonfinite_step(current_iter)
        self.nonfinite_in_a_row = 0
        self.cri_pix.end_step(current_iter)
        self.negative_hook.bank.step(self.get_bare_model(self.net_g), current_iter)
        if self.cri_pix.neg_per_step and current_iter % ((self.opt.get('logger') or {}).get('print_freq') or 100) == 0:
            get_root_logger().info('MCLIR: ' + self.cri_pix.draw_report(current_iter))  # which negatives were used

    @contextlib.contextmanager
    def step_context(self) -> Iterator[StepGuard]:
        """Run a base model's training step with ``mclir.amp``, fp16 loss scaling, ``grad_clip`` and the guard.

        * autocast (bf16/fp16) around the step's forwards; backward and the optimizer steps run outside it;
        * ``Tensor.backward`` scales the loss by the GradScaler (fp16; a pass-through otherwise) and notes whether
          it was finite; each optimizer's ``step`` is guarded: when a loss back-propagated into it (or, without
          fp16, a gradient) is not finite on any rank, the update is skipped and its gradients zeroed; else
          ``grad_clip`` clips ``net_g``'s gradients (unscaled) and ``scaler.step`` steps; one ``scaler.update()``;
        * the EMA update of the base step is skipped when the generator's update was.
        """
        guard, scaler, dtype = StepGuard(), self.grad_scaler, self.amp_dtype
        device_type, dist = self.device.type, bool(self.opt['dist'])
        original_backward = torch.Tensor.backward
        generator_opt = getattr(self, 'optimizer_g', None)

        def backward(loss: torch.Tensor, *args, **kwargs):
            guard.pending.append(bool(torch.isfinite(loss.detach()).all()))
            with torch.autocast(device_type, enabled=False):
                return original_backward(scaler.scale(loss) if scaler.is_enabled() else loss, *args, **kwargs)

        def guarded(optimizer: torch.optim.Optimizer, previous: Any):
            def step(*args, **kwargs):
                finite = all(guard.pending)
                guard.pending = []
                if finite and not scaler.is_enabled():  # fp16 overflows are the scaler's business
                    finite = _grads_finite(optimizer)
                if not all_ranks_agree(finite, dist):  # ranks skip together, or DDP's next all-reduce hangs
                    optimizer.zero_grad()
                    guard.skipped.append(optimizer)
                    return None
                _set_step(optimizer, previous)  # the step as it was (LR schedulers wrap it), for GradScaler.step
                try:
                    with torch.autocast(device_type, enabled=False):
                        if self.step_options.grad_clip and optimizer is generator_opt:
                            scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16)
                            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), self.step_options.grad_clip)
                        guard.stepped = True
                        return scaler.step(optimizer, *args, **kwargs)
                finally:
                    optimizer.step = step
            return step

        def model_ema(decay: float = 0.999) -> None:
            if generator_opt not in guard.skipped:
                type(self).model_ema(self, decay)

        previous = [optimizer.__dict__.get('step') for optimizer in self.optimizers]
        for optimizer, before in zip(self.optimizers, previous):
            optimizer.step = guarded(optimizer, before)
        self.model_ema = model_ema
        torch.Tensor.backward = backward
        try:
            with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                yield guard
            if guard.stepped and scaler.is_enabled():
                scaler.update()
        finally:
            torch.Tensor.backward = original_backward
            del self.model_ema
            for optimizer, before in zip(self.optimizers, previous):
                _set_step(optimizer, before)

    def _skip_nonfinite_step(self, current_iter: int) -> None:
        """Count a step whose update was skipped; stop after ``max_nonfinite_steps`` in a row, naming the checkpoint."""
        self.nonfinite_in_a_row += 1
        limit = self.step_options.max_nonfinite_steps
        values = ', '.join(f'{k}={v:.4g}' for k, v in self.log_dict.items())
        get_root_logger().warning(f'Iteration {current_iter}: non-finite loss ({values}); update skipped '
                                  f'({self.nonfinite_in_a_row} in a row, stopping at {limit}).')
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                nonfinite_stop_message(self.nonfinite_in_a_row, current_iter, self.last_checkpoint))

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch: int, current_iter: int) -> None:
        """The base model's save (network, then training state), except inside a streak of non-finite losses.

        A streak usually follows a divergence, so its weights are not worth resuming from: nothing is written until
        a finite step ends it, and ``--auto_resume`` keeps finding the checkpoint written before it. A failed write
        names the newest complete checkpoint.
        """
        logger = get_root_logger()
        if self.nonfinite_in_a_row:
            when = 'End of training' if current_iter == -1 else f'Iteration {current_iter}'
            logger.warning(f'{when}: no checkpoint written, the run is inside a streak of '
                           f'{self.nonfinite_in_a_row} non-finite losses; the newest checkpoint stays '
                           f'{self.last_checkpoint or "none (nothing written yet)"}.')
            return
        try:
            super().save(epoch, current_iter)
        except CheckpointWriteError as err:
            newest = (f'Newest complete checkpoint: {self.last_checkpoint}; --auto_resume resumes from it.'
                      if self.last_checkpoint else 'No complete checkpoint exists yet: start the run again.')
            raise CheckpointWriteError(f'{err} {newest}') from err
        if current_iter != -1:
            self.last_checkpoint = os.path.join(self.opt['path']['training_states'], f'{current_iter}.state')

    @master_only
    def save_network(self, net, net_label: str, current_iter: int, param_key='params') -> None:
        """BasicSR's ``save_network`` (same file, keys and CPU tensors), written atomically."""
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError('save_network: one param_key per network.')
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = {(k[7:] if k.startswith('module.') else k): v.cpu() for k, v in state.items()}
        atomic_torch_save(save_dict, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's training state (optimizers, ``optimizer_d`` too, and schedulers) plus, written atomically by
        rank 0:

        * ``'mclir'``: the negatives and their counters;
        * ``'neg_weight'``: the criterion's ``neg_weight`` (calibrated by ``neg_weight: auto``) and calibration;
        * ``'realesrgan_queue'``: Real-ESRGAN's training-pair queue (``queue_lr``, ``queue_gt``, ``queue_ptr``);
        * ``'progress'``: every rank's random states and the position in the epoch, from ``train_progress``
          (:mod:`mclir_plugin.utils.exact_resume`).

        Called on every rank (the random states are gathered), unlike BasicSR's master-only version.
        """
        if current_iter == -1:
            return
        progress = [self.train_progress.state()]
        rank, world_size = get_dist_info()
        if world_size > 1:
            progress = [None] * world_size
            torch.distributed.all_gather_object(progress, self.train_progress.state())
        if rank != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 STATE_KEY: self.negative_hook.bank.state_dict(),
                 'grad_scaler': self.grad_scaler.state_dict(),
                 'neg_weight': self.cri_pix.state(),
                 'progress': progress}
        if hasattr(self, 'queue_lr'):  # Real-ESRGAN's pool of training pairs, or a resume would refill it afresh
            state[QUEUE_KEY] = {'lr': self.queue_lr.cpu(), 'gt': self.queue_gt.cpu(), 'ptr': int(self.queue_ptr)}
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: dict) -> None:
        super().resume_training(resume_state)
        logger = get_root_logger()
        if resume_state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
        if 'neg_weight' in resume_state:
            self.cri_pix.load_state(resume_state['neg_weight'])
        if QUEUE_KEY in resume_state:
            queue = resume_state[QUEUE_KEY]
            self.queue_lr, self.queue_gt = queue['lr'].to(self.device), queue['gt'].to(self.device)
            self.queue_ptr = queue['ptr']
        if STATE_KEY in resume_state:
            try:
                self.negative_hook.bank.load_state_dict(resume_state[STATE_KEY])
            except (ValueError, RuntimeError, KeyError) as err:
                raise type(err)(f"Training state {self.opt['path'].get('resume_state')!r}: {err}") from err
            logger.info('MCLIR: negatives restored from the training state. ' + self.negative_hook.bank.describe())
        else:
            logger.warning('MCLIR: the training state has no negative models (it was not written by MCLIRModel); '
                           'the negatives start afresh from the resumed network.')
        progress = resume_state.get('progress')
        rank, world_size = get_dist_info()
        if progress is None:
            logger.warning('Exact resume unavailable: the training state has no random states; the interrupted '
                           'epoch restarts from its first batch (BasicSR behaviour).')
        elif len(progress) != world_size:
            logger.warning(f'Exact resume skipped: the checkpoint was written by {len(progress)} process(es), this run '
                           f'has {world_size}; the interrupted epoch restarts from its first batch.')
        else:
            self.train_progress.schedule_resume(progress[rank])

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """The base model's validation, then (``mclir.visualize``) a picture of the negatives; leaves every random
        state as it was, so validating cannot change training."""
        with preserved_rng():
            result = super().validation(dataloader, current_iter, tb_logger, save_img)
            if self.step_options.visualize and get_dist_info()[0] == 0 and self.is_train:
                self.save_negatives_picture(dataloader, current_iter, tb_logger)
        return result

    @torch.no_grad()
    def save_negatives_picture(self, dataloader, current_iter, tb_logger=None, max_side: int = 256) -> str:
        """Save ``input | output | negative 1..N | ground truth | distance to the nearest negative`` for the first
        validation image (centre crop of at most ``max_side`` output pixels) under
        ``visualization/mclir_negatives/<iter>.png``, and log it to TensorBoard. Returns the file path.

        The distance map is ``min_i mean_c |out - neg_i|``, scaled so its maximum is white: dark where the output
        is still close to some history model, bright where it has moved away from all of them. Video models show
        the centre frame of each clip.
        """
        data = next(iter(dataloader))
        self.is_train = False  # Real-ESRGAN's feed_data degrades training batches only
        try:
            self.feed_data(data)
        finally:
            self.is_train = True
        self.test()
        output = _centre_frame(self.output.detach().float())
        negatives = [_centre_frame(self._test_with(neg)) for neg in self.negative_hook.bank.negatives]
        height, width = output.shape[-2:]
        lq = torch.nn.functional.interpolate(_centre_frame(self.lq.float()), size=(height, width), mode='nearest')
        gt = [_centre_frame(self.gt.float())[..., :height, :width]] if hasattr(self, 'gt') else []
        panels = [lq, output, *negatives, *gt]
        distance = torch.stack([(output - neg).abs().mean(1, keepdim=True) for neg in negatives]).amin(0)
        panels.append((distance / distance.max().clamp_min(1e-12)).expand_as(output))
        top, left = max(0, (height - max_side) // 2), max(0, (width - max_side) // 2)
        crop = [p[:1, :3, top:top + max_side, left:left + max_side].clamp(0, 1).cpu() for p in panels]
        grid = torch.cat(crop, dim=-1)
        path = os.path.join(self.opt['path']['visualization'], 'mclir_negatives', f'{current_iter}.png')
        imwrite(tensor2img(grid), path)
        if tb_logger is not None:
            tb_logger.add_image('mclir/input_output_negatives_gt_distance', grid[0], current_iter)
        del self.lq, self.output
        if hasattr(self, 'gt'):
            del self.gt
        return path

    def _test_with(self, net: torch.nn.Module) -> torch.Tensor:
        """The base model's ``test()`` (padding, tiling, flips) run with ``net`` in place of the evaluated network."""
        had_ema, ema, net_g = hasattr(self, 'net_g_ema'), getattr(self, 'net_g_ema', None), self.net_g
        # SRModel.test() and its subclasses evaluate net_g_ema when it exists, the video models net_g
        self.net_g_ema = self.net_g = net
        try:
            self.test()
        finally:
            self.net_g = net_g
            if had_ema:
                self.net_g_ema = ema
            else:
                del self.net_g_ema
            net.eval()  # a test() that evaluates net_g sets it back to train mode
        return self.output.detach().float()


def _centre_frame(x: torch.Tensor) -> torch.Tensor:
    """The centre frame of a clip (B, T, C, H, W); an image batch unchanged."""
    return x[:, x.shape[1] // 2] if x.dim() == 5 else x


def _shared_seed(seed: int) -> int:
    """``seed`` as rank 0 has it: BasicSR draws a random ``manual_seed`` per rank when the option file has none."""
    rank, world_size = get_dist_info()
    if world_size > 1:
        box = [int(seed)]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return int(seed)


def _set_step(optimizer: torch.optim.Optimizer, step: Any) -> None:
    """Set the optimizer's instance ``step`` (None: the class's own)."""
    if step is None:
        optimizer.__dict__.pop('step', None)
    else:
        optimizer.step = step


def _grads_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimizer would apply is finite (one device sync)."""
    grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def merge_terms(log: dict[str, float], terms: dict[str, float]) -> OrderedDict:
    """The base step's log with the criterion's terms: its pixel entry (``l_pix``, GAN ``l_g_pix``: the whole
    criterion, ``l_rec - l_neg``) shows the reconstruction term, then ``l_neg`` and ``l_neg_ratio``."""
    merged = OrderedDict(log)
    key = next((k for k in ('l_pix', 'l_g_pix') if k in merged), 'l_pix')
    merged[key] = terms['l_pix']
    merged['l_neg'], merged['l_neg_ratio'] = terms['l_neg'], terms['l_neg_ratio']
    return merged


def nonfinite_stop_message(count: int, current_iter: int, checkpoint: str | None) -> str:
    """Why the run stops after ``count`` non-finite losses in a row, and how to go on from ``checkpoint``."""
    first = current_iter - count + 1
    text = f'{count} non-finite losses in a row (iterations {first}-{current_iter}). '
    if checkpoint is None:
        return text + (f'No checkpoint was written before iteration {first}, so there is nothing to resume: start '
                       'the run afresh with a lower train.optim_g.lr (or neg_weight), or check the data.')
    iteration = os.path.basename(checkpoint).split('.')[0]
    return text + (f'The last checkpoint written before they began is {checkpoint} (network: net_g_{iteration}.pth; '
                   'none is written during such a streak, so --auto_resume finds it). Resume from it with a lower '
                   'train.optim_g.lr (or neg_weight) and `train.resume_lr: options` (without it a resumed run keeps '
                   "the training state's learning rate and scheduler), or check the data.")


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The ``mclir`` block's training-step options (README, "The mclir block")."""
    amp_dtype: torch.dtype | None = None
    neg_every: int = 1
    neg_batch_fraction: float = 1.0
    neg_per_step: int | None = None
    max_nonfinite_steps: int = 10
    visualize: bool = True
    grad_clip: float = 0.0


STEP_OPTIONS = {  # the schema of the block's step options; StepOptions holds what they mean
    'amp': Choice(*AMP_DTYPES),
    'neg_every': Integer(low=1, note='1 = every step'),
    'neg_batch_fraction': Number(0, 1, low_open=True, note='1 = the whole batch'),
    'neg_per_step': Optional(Integer(low=1), note='at most the number of negatives; ~ = all of them'),
    'max_nonfinite_steps': Integer(low=1),
    'visualize': Boolean(),
    'grad_clip': Optional(Number(low=0), note='the max gradient norm; 0 or ~ = off'),
}


def refuse_cpu_amp_with_deformable_convs(net: torch.nn.Module, amp_dtype: torch.dtype | None,
                                         device: torch.device) -> None:
    """Refuse ``mclir.amp`` on CPU for networks with deformable convolutions (EDVR's DCNv2Pack).

    torchvision's ``deform_conv2d`` has no bf16/fp16 CPU kernel, so such a step would stop at its first forward.
    (The same check refuses ``mclir.hook.precision`` bf16/fp16 for such a network's negatives on CPU.)
    """
    refuse_deformable_convs(net, amp_dtype, device, 'mclir.amp', 'none')


def read_step_options(mclir_opt: dict[str, Any]) -> StepOptions:
    """The step options of the mclir block, with errors naming the key."""
    given = dict(mclir_opt)
    if given.get('amp') is None or given.get('amp') is False:  # `amp: ~` and `amp: false` mean none too
        given['amp'] = 'none'
    values = check_options(STEP_OPTIONS, given, 'mclir')
    values['grad_clip'] = values.get('grad_clip') or 0.0
    return StepOptions(amp_dtype=AMP_DTYPES[values.pop('amp')], **values)


def build_negative_hook(opt: dict[str, Any]) -> HistoryNegativeHook:
    """Build the hook from ``opt['mclir']['hook']``, with errors naming the key."""
    mclir_opt = opt.get('mclir') or {}
    hook_opt = dict(mclir_opt.get('hook') or {})
    hook_type = hook_opt.pop('type', 'HistoryNegativeHook')
    hook_cls = HOOKS.get(hook_type)
    if hook_cls is None or not issubclass(hook_cls, HistoryNegativeHook):
        raise KeyError(f"mclir.hook.type {hook_type!r} is not a registered history-negative hook; "
                       "use 'HistoryNegativeHook'.")
    check_keys(hook_opt, accepted_kwargs(hook_cls) + accepted_kwargs(HistoryNegatives), 'mclir.hook')
    try:
        return hook_cls(**hook_opt)
    except OptionError as err:
        raise err.under('mclir.hook') from None
    except ValueError as err:
        raise ValueError(f'mclir.hook: {err}') from None


def check_spn_pixel_opt(opt: dict[str, Any]) -> None:
    """Require ``train.pixel_opt`` to build a :class:`ContrastiveLoss` (SPNLoss or a peer) and check its keys."""
    pixel_opt = (opt.get('train') or {}).get('pixel_opt') or {}
    loss_type = pixel_opt.get('type')
    loss_cls = LOSS_REGISTRY.get(loss_type) if loss_type in LOSS_REGISTRY else None
    if loss_cls is None or not (isinstance(loss_cls, type) and issubclass(loss_cls, ContrastiveLoss)):
        raise ValueError(f'MCLIRModel needs `train.pixel_opt.type: SPNLoss` (or a peer loss: ContrastRatioLoss, '
                         f'InfoNCELoss), got {loss_type!r}; it holds the reconstruction term (L1 by default) and the '
                         'negative term, and the base model\'s step calls it as cri_pix.')
    check_call_kwargs(loss_cls, pixel_opt, 'train.pixel_opt')
    check_options(loss_cls.OPTIONS, pixel_opt, 'train.pixel_opt')  # before BasicSR builds it, to name the block


# Registered BasicSR model types that cannot be trained through cri_pix, and why (refused before anything is built)
UNSUPPORTED = {
    'StyleGAN2Model': 'it generates from noise (no lq input, no cri_pix): there is no restoration output to '
                      'contrast with negatives',
}

_WRAPPED: dict[type, type] = {}


def mclir_class(base: type) -> type:
    """The class ``MCLIR<Base>`` = :class:`MCLIRMixin` in front of ``base`` (cached, so isinstance works).

    Any BasicSR ``BaseModel`` subclass whose training step calls ``cri_pix`` is accepted (SR, GAN, Real-ESRGAN and
    video models); the base model's ``optimize_parameters`` is wrapped, never rewritten.
    """
    if base not in _WRAPPED:
        name = getattr(base, '__name__', base)
        if not (isinstance(base, type) and issubclass(base, BaseModel)):
            raise TypeError(f'mclir.base_model {name!r} is not a BasicSR BaseModel subclass; MCLIRModel wraps BasicSR '
                            'models (SRModel, SwinIRModel, SRGANModel, RealESRGANModel_basicsr, VideoRecurrentModel, '
                            '...).')
        if name in UNSUPPORTED:
            raise TypeError(f'mclir.base_model {name} cannot be trained with SPN: {UNSUPPORTED[name]}.')
        _WRAPPED[base] = type(f'MCLIR{base.__name__}', (MCLIRMixin, base), {'__module__': __name__})
    return _WRAPPED[base]


@MODEL_REGISTRY.register()
def MCLIRModel(opt: dict[str, Any]):  # noqa: N802  (a model type name, as the option file spells it)
    """Build ``mclir.base_model`` (default ``SRModel``) extended with history negatives and SPN training.

    Option errors (unknown keys, bad values) name the key and, when run through ``tools/train.py``, the file.
    """
    try:
        return _build_mclir_model(opt)
    except (KeyError, ValueError, TypeError) as err:
        raise naming_the_file(err) from err


def _build_mclir_model(opt: dict[str, Any]):
    mclir_opt = opt.get('mclir')
    if mclir_opt is None:
        mclir_opt = opt['mclir'] = {}
    if not isinstance(mclir_opt, dict):
        raise TypeError(f'The mclir block must be a mapping (base_model, hook), got {type(mclir_opt).__name__}.')
    check_keys(mclir_opt, MCLIR_KEYS, 'mclir')
    import_option_modules(opt)  # e.g. realesrgan, whose plain RealESRGANModel then wins (also for build_model callers)
    base_name = mclir_opt.get('base_model', 'SRModel')
    key = resolve_model_type(base_name)  # as BasicSR's MODEL_REGISTRY.get: RealESRGANModel -> *_basicsr
    if base_name == 'MCLIRModel' or key is None:
        known = sorted(name for name, _ in MODEL_REGISTRY if name != 'MCLIRModel')
        raise KeyError(f'mclir.base_model {base_name!r} is not a registered BasicSR model type; use the model_type '
                       f'your option file had before (one of {", ".join(known)}), and import the package that '
                       'registers it (mclir.import_modules, e.g. [realesrgan]).')
    return mclir_class(MODEL_REGISTRY.get(key))(opt)
