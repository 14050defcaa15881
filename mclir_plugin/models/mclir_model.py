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
import math
import os
from collections import OrderedDict
from typing import Any

import torch
from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from mmengine.registry import HOOKS

from mclir_plugin.checkpoint import atomic_torch_save
from mclir_plugin.hooks.history_negative_hook import HistoryNegativeHook
from mclir_plugin.losses.contrastive_base import NegativeContrastLoss
from mclir_plugin.losses.spn_loss import SPNLoss
from mclir_plugin.options import check_call_kwargs, check_keys
from mclir_plugin.resume import PROGRESS, preserved_rng, schedule_resume

MCLIR_KEYS = ('base_model', 'hook', 'amp', 'neg_every', 'neg_batch_fraction')
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
        self.amp_dtype, self.neg_every, self.neg_batch_fraction = read_cost_options(self.opt.get('mclir') or {})
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

        self.grad_scaler.scale(l_total).backward()
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        self.log_dict = self.reduce_loss_dict({k: v.float() for k, v in loss_dict.items()})
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.negative_hook.step(self.get_bare_model(self.net_g), current_iter)

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
        l_pix = self.cri_pix.reconstruction(self.output, self.gt)
        if self.cri_pix.neg_weight == 0:
            return l_pix, self.output.new_zeros(())
        return l_pix, self.neg_every * self.cri_pix.neg_weight * self.cri_pix.negative_distance(output, negatives)

    # ------------------------------------------------------------------ checkpoints
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
                 'progress': progress}
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: dict) -> None:
        super().resume_training(resume_state)
        logger = get_root_logger()
        if resume_state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
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
        """The base model's validation, leaving every random state as it was (so it cannot change training)."""
        with preserved_rng():
            return super().validation(dataloader, current_iter, tb_logger, save_img)


def _shared_seed(seed: int) -> int:
    """``seed`` as rank 0 has it: BasicSR draws a random ``manual_seed`` per rank when the option file has none."""
    rank, world_size = get_dist_info()
    if world_size > 1:
        box = [int(seed)]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return int(seed)


def read_cost_options(mclir_opt: dict[str, Any]) -> tuple[torch.dtype | None, int, float]:
    """``(amp dtype, neg_every, neg_batch_fraction)`` from the mclir block, with errors naming the key."""
    amp = mclir_opt.get('amp', 'none')
    if amp is None or amp is False:
        amp = 'none'
    if amp not in AMP_DTYPES:
        raise ValueError(f"mclir.amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}.")
    neg_every = mclir_opt.get('neg_every', 1)
    if isinstance(neg_every, bool) or not isinstance(neg_every, int) or neg_every < 1:
        raise ValueError(f'mclir.neg_every must be an integer >= 1 (1 = every step), got {neg_every!r}.')
    fraction = mclir_opt.get('neg_batch_fraction', 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f'mclir.neg_batch_fraction must be in (0, 1] (1 = the whole batch), got {fraction!r}.')
    return AMP_DTYPES[amp], neg_every, float(fraction)


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
    """Build ``mclir.base_model`` (default ``SRModel``) extended with history negatives and SPN training."""
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
