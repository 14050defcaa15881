"""MCLIRModel: any SRModel-family BasicSR model, trained with history negatives and the SPN loss.

``model_type: MCLIRModel`` builds the model named by ``mclir.base_model`` (``SRModel``, ``SwinIRModel``, HAT's
``HATModel``, ...) as a subclass that changes only training: its network, EMA, optimizers, schedulers, validation and
test (SwinIR's padding, say) stay those of the base model. One training step, in the official order:

1. ``out = net_g(lq)``; ``neg_i = negative_i(lq)`` for every negative, without gradients;
2. ``l_pix, l_neg = SPNLoss.terms(out, gt, negs)``; ``loss = l_pix - l_neg`` (plus ``perceptual_opt`` if set);
3. ``backward``, ``optimizer.step()``, the base model's EMA update;
4. the hook refreshes the negatives due at this iteration from the raw (non-EMA) ``net_g``.

Logged: ``l_pix``, ``l_neg`` (the weighted negative term, the amount subtracted) and ``l_neg_ratio`` =
``l_neg / l_pix`` (the authors keep it at 0.01-0.1). The negatives and the hook's counters are written into every
training state (``training_states/<iter>.state``, key ``mclir``) with the random states and the epoch position
(key ``progress``, :mod:`mclir_plugin.resume`), and restored on resume, so a resumed run continues exactly;
checkpoints are written atomically. Validation leaves the random states untouched.

Caveat: the base model must keep ``SRModel.optimize_parameters``; models with their own training step (GAN models)
are refused with a clear error rather than silently trained without their extra losses.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections import OrderedDict
from typing import Any

import torch
from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from mmengine.registry import HOOKS

from mclir_plugin.checkpoint import CheckpointWriteError, atomic_torch_save
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook
from mclir_plugin.losses.contrastive_base import NegativeContrastLoss
from mclir_plugin.losses.spn_loss import SPNLoss
from mclir_plugin.option_schema import Boolean, Choice, Integer, Number, Optional, OptionError, check_options
from mclir_plugin.options import check_call_kwargs, check_keys, naming_the_file
from mclir_plugin.resume import PROGRESS, preserved_rng, schedule_resume

MCLIR_KEYS = ('base_model', 'hook', 'amp', 'neg_every', 'neg_batch_fraction', 'max_nonfinite_steps', 'visualize',
              'grad_clip')
STATE_KEY = 'mclir'
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
CONTRASTIVE_LOSSES = (SPNLoss, NegativeContrastLoss)


class MCLIRMixin:
    """Training-step extension mixed in front of an SRModel-family class (see the module docstring)."""

    negative_hook: HistoryNegativeHook

    def init_training_settings(self) -> None:
        logger = get_root_logger()
        self.negative_hook = build_negative_hook(self.opt)  # option errors first, before anything is built
        check_spn_pixel_opt(self.opt)
        self.step_options = read_step_options(self.opt.get('mclir') or {})
        self.amp_dtype = self.step_options.amp_dtype
        self.neg_every, self.neg_batch_fraction = self.step_options.neg_every, self.step_options.neg_batch_fraction
        self.nonfinite_in_a_row = 0
        # the newest complete training state: named when non-finite losses stop the run (none are written in a streak)
        self.last_checkpoint: str | None = self.opt['path'].get('resume_state')
        self.ratio_window: list[float] = []
        super().init_training_settings()
        # fp16 needs loss scaling; bf16 has fp32's range and does not. Disabled, the scaler is a pass-through.
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        if not isinstance(self.cri_pix, CONTRASTIVE_LOSSES):
            raise TypeError(f'train.pixel_opt built {type(self.cri_pix).__name__}, not an SPNLoss or a '
                            'NegativeContrastLoss.')
        vgg = self.cri_pix.vgg
        log = logger.warning if vgg.weights_source.startswith('RANDOM') else logger.info
        log(f'{type(self.cri_pix).__name__}: {vgg.vgg_type} {vgg.weights_source}')
        if self.negative_hook.seed is None:
            self.negative_hook.seed = _shared_seed(self.opt.get('manual_seed', 0))
        self.calibration = LambdaCalibration(self.cri_pix) if getattr(self.cri_pix, 'auto_neg_weight', False) else None
        network_opt = copy.deepcopy(self.opt['network_g'])
        self.negative_hook.build(self.get_bare_model(self.net_g), fresh_init=lambda: build_network(network_opt))
        logger.info('MCLIR: ' + self.negative_hook.describe())

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        loss_dict = OrderedDict()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)):
            self.output = self.net_g(self.lq)
            l_pix, l_neg = self.spn_terms(current_iter)
            l_total = l_pix - l_neg
            loss_dict['l_pix'] = l_pix
            loss_dict['l_neg'] = l_neg
            loss_dict['l_neg_ratio'] = (l_neg / l_pix).detach()
            if self.cri_perceptual:
                l_percep, l_style = self.cri_perceptual(self.output, self.gt)
                if l_percep is not None:
                    l_total = l_total + l_percep
                    loss_dict['l_percep'] = l_percep
                if l_style is not None:
                    l_total = l_total + l_style
                    loss_dict['l_style'] = l_style

        if not self._all_finite(l_total):
            return self._skip_nonfinite_step(current_iter, loss_dict)
        self.nonfinite_in_a_row = 0
        if self.negative_hook.adaptive:  # the official adaptive variant refreshes before backward (pre-step weights)
            self.negative_hook.adaptive_step(self.get_bare_model(self.net_g), self.output, self.gt, current_iter)
        self.grad_scaler.scale(l_total).backward()
        if self.step_options.grad_clip:  # on the true gradients: unscale fp16's first (a no-op otherwise)
            self.grad_scaler.unscale_(self.optimizer_g)
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), self.step_options.grad_clip)
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        self.log_dict = self.reduce_loss_dict({k: v.float() for k, v in loss_dict.items()})
        if self.calibration is not None and self.calibration.count >= self.cri_pix.auto_iters:
            self.calibration.finish(self.opt['dist'])
            self.calibration = None
        self._watch_ratio(current_iter, loss_dict['l_neg_ratio'])
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.negative_hook.step(self.get_bare_model(self.net_g), current_iter)

    RATIO_WINDOW = 1000

    def _watch_ratio(self, current_iter: int, ratio: torch.Tensor) -> None:
        """Warn when ``l_neg_ratio`` averages outside the authors' [0.01, 0.1] over a window of iterations."""
        if self.calibration is not None or ratio.item() == 0:  # calibrating, or no negative term on this step
            return
        self.ratio_window.append(abs(ratio.item()))
        if len(self.ratio_window) < self.RATIO_WINDOW:
            return
        mean = sum(self.ratio_window) / len(self.ratio_window)
        self.ratio_window = []
        if not 0.01 <= mean <= 0.1 and isinstance(self.cri_pix, SPNLoss):
            get_root_logger().warning(
                f'l_neg_ratio averaged {mean:.3g} over the {self.RATIO_WINDOW} iterations before {current_iter}, '
                f'outside the authors\' [0.01, 0.1]: neg_weight {self.cri_pix.neg_weight:.3g} -> about '
                f'{self.cri_pix.neg_weight * 0.05 / mean:.3g} would give 0.05 (or use neg_weight: auto).')

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (ranks must skip together, or DDP's all-reduce would hang)."""
        finite = torch.isfinite(loss.detach()).float()
        if self.opt['dist']:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _skip_nonfinite_step(self, current_iter: int, loss_dict: OrderedDict) -> None:
        """Skip the update of a NaN/Inf loss; stop after ``max_nonfinite_steps`` in a row, naming the checkpoint."""
        self.optimizer_g.zero_grad()
        self.log_dict = self.reduce_loss_dict({k: v.detach().float() for k, v in loss_dict.items()})
        self.nonfinite_in_a_row += 1
        limit = self.step_options.max_nonfinite_steps
        values = ', '.join(f'{k}={v:.4g}' for k, v in self.log_dict.items())
        get_root_logger().warning(f'Iteration {current_iter}: non-finite loss ({values}); update skipped '
                                  f'({self.nonfinite_in_a_row} in a row, stopping at {limit}).')
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                nonfinite_stop_message(self.nonfinite_in_a_row, current_iter, self.last_checkpoint))

    def spn_terms(self, current_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(l_pix, l_neg)`` of this step, with the cost options ``neg_every`` and ``neg_batch_fraction``.

        With ``neg_every = k`` the negative term is computed on every k-th iteration only, weighted by k (the same
        expectation); with ``neg_batch_fraction = f`` on a random subset of ``ceil(f * B)`` samples of the batch.
        """
        if current_iter % self.neg_every:
            return self.cri_pix.reconstruction(self.output, self.gt), self.output.new_zeros(())
        lq, output, gt = self.lq, self.output, self.gt
        if self.neg_batch_fraction < 1:
            keep = torch.randperm(lq.shape[0], device=lq.device)[:math.ceil(self.neg_batch_fraction * lq.shape[0])]
            lq, output, gt = lq[keep], output[keep], gt[keep]
        if isinstance(self.cri_pix, NegativeContrastLoss):  # peer losses: l_neg = -neg_weight * C(out, gt, negs)
            negatives = self.negative_hook.forward_negatives(lq) if self.cri_pix.uses_history else None
            l_pix = self.cri_pix.reconstruction(self.output, self.gt)
            return l_pix, self.neg_every * self.cri_pix.negative_term(output, gt, negatives, lq=lq)
        negatives = self.negative_hook.forward_negatives(lq)
        if self.cri_pix.uncertainty_weighting and self.neg_batch_fraction == 1:
            l_pix = self.cri_pix.reconstruction(self.output, self.gt, self.cri_pix.uncertainty_weight(negatives))
        else:  # (with a batch fraction the negatives cover only part of the batch: no weighting)
            l_pix = self.cri_pix.reconstruction(self.output, self.gt)
        if self.calibration is not None:  # neg_weight: auto, still measuring: the negative term is off
            with torch.no_grad():
                self.calibration.add(l_pix, self.cri_pix.negative_distance(output, negatives))
            return l_pix, self.output.new_zeros(())
        if self.cri_pix.neg_weight == 0:
            return l_pix, self.output.new_zeros(())
        return l_pix, self.neg_every * self.cri_pix.neg_weight * self.cri_pix.negative_distance(output, negatives)

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
        """BasicSR's training state plus, written atomically by rank 0:

        * ``'mclir'``: the negatives and the hook's counters;
        * ``'progress'``: every rank's random states and the position in the epoch (see :mod:`mclir_plugin.resume`).

        Called on every rank (the random states are gathered), unlike BasicSR's master-only version.
        """
        if current_iter == -1:
            return
        progress = [PROGRESS.state()]
        rank, world_size = get_dist_info()
        if world_size > 1:
            progress = [None] * world_size
            torch.distributed.all_gather_object(progress, PROGRESS.state())
        if rank != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 STATE_KEY: self.negative_hook.state_dict(),
                 'grad_scaler': self.grad_scaler.state_dict(),
                 'neg_weight': {'value': float(self.cri_pix.neg_weight),
                                'calibration': None if self.calibration is None else self.calibration.state()},
                 'progress': progress}
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: dict) -> None:
        super().resume_training(resume_state)
        logger = get_root_logger()
        if resume_state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
        if 'neg_weight' in resume_state and getattr(self.cri_pix, 'auto_neg_weight', False):
            saved = resume_state['neg_weight']
            self.cri_pix.neg_weight = saved['value']
            if saved['calibration'] is None:
                self.calibration = None
                logger.info(f"neg_weight auto: lambda {saved['value']:.4g} restored from the training state.")
            else:
                self.calibration.load(saved['calibration'])
        if STATE_KEY in resume_state:
            try:
                self.negative_hook.load_state_dict(resume_state[STATE_KEY])
            except (ValueError, RuntimeError, KeyError) as err:
                raise type(err)(f"Training state {self.opt['path'].get('resume_state')!r}: {err}") from err
            logger.info('MCLIR: negatives restored from the training state. ' + self.negative_hook.describe())
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
            schedule_resume(progress[rank])

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
        is still close to some history model, bright where it has moved away from all of them.
        """
        data = next(iter(dataloader))
        self.feed_data(data)
        self.test()
        output = self.output.detach().float()
        negatives = [self._test_with(neg) for neg in self.negative_hook.negatives]
        height, width = output.shape[-2:]
        lq = torch.nn.functional.interpolate(self.lq.float(), size=(height, width), mode='nearest')
        panels = [lq, output, *negatives] + ([self.gt.float()[..., :height, :width]] if hasattr(self, 'gt') else [])
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
        """The base model's ``test()`` (padding, tiling) run with ``net`` in place of the evaluated network."""
        had_ema, ema = hasattr(self, 'net_g_ema'), getattr(self, 'net_g_ema', None)
        self.net_g_ema = net  # SRModel.test() and its subclasses evaluate net_g_ema when it exists
        try:
            self.test()
        finally:
            if had_ema:
                self.net_g_ema = ema
            else:
                del self.net_g_ema
        return self.output.detach().float()


def _shared_seed(seed: int) -> int:
    """``seed`` as rank 0 has it: BasicSR draws a random ``manual_seed`` per rank when the option file has none."""
    rank, world_size = get_dist_info()
    if world_size > 1:
        box = [int(seed)]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return int(seed)


class LambdaCalibration:
    """``neg_weight: auto``: sums of the reconstruction term R and the VGG distance D over the first iterations,
    then ``lambda = auto_ratio * mean(R) / mean(D)`` (means over ranks too, so every rank gets the same lambda)."""

    def __init__(self, loss: SPNLoss) -> None:
        self.loss = loss
        self.sum_rec, self.sum_distance, self.count = 0.0, 0.0, 0

    def add(self, l_rec: torch.Tensor, distance: torch.Tensor) -> None:
        self.sum_rec += float(l_rec.detach())
        self.sum_distance += float(distance)
        self.count += 1

    def finish(self, dist: bool) -> float:
        sums = torch.tensor([self.sum_rec, self.sum_distance], dtype=torch.float64)
        if dist:
            backend_device = 'cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu'
            sums = sums.to(backend_device)
            torch.distributed.all_reduce(sums)
        rec, distance = sums.tolist()
        if distance <= 0:
            raise FloatingPointError('neg_weight auto: the VGG distance to the negatives stayed 0 during calibration '
                                     '(negatives identical to the network?); set neg_weight to a number.')
        self.loss.neg_weight = self.loss.auto_ratio * rec / distance
        get_root_logger().info(
            f'neg_weight auto: lambda = {self.loss.neg_weight:.4g} (target l_neg_ratio {self.loss.auto_ratio}; mean '
            f'reconstruction {rec / self.count:.4g} and VGG distance {distance / self.count:.4g} per rank over '
            f'{self.count} iterations); fixed from now on and stored in the training state.')
        return self.loss.neg_weight

    def state(self) -> list[float]:
        return [self.sum_rec, self.sum_distance, self.count]

    def load(self, state: list[float]) -> None:
        self.sum_rec, self.sum_distance, self.count = state[0], state[1], int(state[2])


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


def latest_training_state(opt: dict[str, Any]) -> str | None:
    """The newest complete ``<iter>.state`` of the run, or None."""
    folder = opt['path'].get('training_states')
    if not folder or not os.path.isdir(folder):
        return None
    iters = [int(f[:-6]) for f in os.listdir(folder) if f.endswith('.state') and f[:-6].isdigit()]
    return os.path.join(folder, f'{max(iters)}.state') if iters else None


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The ``mclir`` block's training-step options (README, "The mclir block")."""
    amp_dtype: torch.dtype | None = None
    neg_every: int = 1
    neg_batch_fraction: float = 1.0
    max_nonfinite_steps: int = 10
    visualize: bool = True
    grad_clip: float = 0.0


STEP_OPTIONS = {  # the schema of the block's step options; StepOptions holds what they mean
    'amp': Choice(*AMP_DTYPES),
    'neg_every': Integer(low=1, note='1 = every step'),
    'neg_batch_fraction': Number(0, 1, low_open=True, note='1 = the whole batch'),
    'max_nonfinite_steps': Integer(low=1),
    'visualize': Boolean(),
    'grad_clip': Optional(Number(low=0), note='the max gradient norm; 0 or ~ = off'),
}


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
    check_call_kwargs(hook_cls, hook_opt, 'mclir.hook')
    try:
        return hook_cls(**hook_opt)
    except OptionError as err:
        raise err.under('mclir.hook') from None
    except ValueError as err:
        raise ValueError(f'mclir.hook: {err}') from None


def check_spn_pixel_opt(opt: dict[str, Any]) -> None:
    """Require ``train.pixel_opt.type: SPNLoss`` and check its keys."""
    pixel_opt = (opt.get('train') or {}).get('pixel_opt') or {}
    loss_type = pixel_opt.get('type')
    loss_cls = LOSS_REGISTRY.get(loss_type) if loss_type in LOSS_REGISTRY else None
    if loss_cls is None or not issubclass(loss_cls, CONTRASTIVE_LOSSES):
        raise ValueError(f'MCLIRModel needs `train.pixel_opt.type: SPNLoss` (or a peer loss: ContrastRatioLoss, '
                         f'InfoNCELoss), got {loss_type!r}; it holds the reconstruction term (L1 by default) and the '
                         'negative term.')
    check_call_kwargs(loss_cls, pixel_opt, 'train.pixel_opt')
    check_options(loss_cls.OPTIONS, pixel_opt, 'train.pixel_opt')  # before BasicSR builds it, to name the block


_WRAPPED: dict[type, type] = {}


def mclir_class(base: type) -> type:
    """The class ``MCLIR<Base>`` = :class:`MCLIRMixin` in front of ``base`` (cached, so isinstance works)."""
    if base not in _WRAPPED:
        if not (isinstance(base, type) and issubclass(base, SRModel)):
            raise TypeError(f'mclir.base_model {getattr(base, "__name__", base)!r} is not an SRModel subclass; '
                            'MCLIRModel wraps SRModel-family models (SRModel, SwinIRModel, HATModel, ...).')
        if base.optimize_parameters is not SRModel.optimize_parameters:
            raise TypeError(f'mclir.base_model {base.__name__} has its own optimize_parameters (a GAN or video model); '
                            'MCLIRModel only wraps models that keep SRModel\'s training step.')
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
    base_name = mclir_opt.get('base_model', 'SRModel')
    if base_name == 'MCLIRModel' or base_name not in MODEL_REGISTRY:
        known = sorted(name for name, _ in MODEL_REGISTRY if name != 'MCLIRModel')
        raise KeyError(f'mclir.base_model {base_name!r} is not a registered BasicSR model type; use the model_type '
                       f'your option file had before (one of {", ".join(known)}), and import the package that '
                       'registers it.')
    return mclir_class(MODEL_REGISTRY.get(base_name))(opt)
