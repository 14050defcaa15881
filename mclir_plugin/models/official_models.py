"""The official MCLIR repository's model types, run as :class:`~mclir_plugin.models.MCLIRModel`.

The official code (``Aitical/MCLIR``) registers six model types and writes the method in its own keys
(``train.neg_iter``, ``train.perceptual_opt`` as the subtracted term, ...). Each type is registered here under the
same name, so an official option file trains unchanged: :func:`translate_official` maps its keys to the plugin's
contract, the log prints the equivalent ``mclir:``/``pixel_opt`` lines, and the plugin's ``MCLIRModel`` trains it,
with the official pairing (``official_reversed``) and the plugin's fixes (negatives saved and resumed, identical on
every rank, VGG on the output once). ``tools/convert_official_options.py`` writes the same translation as a file.

Official -> plugin:

* ``model_type: SRNegModel`` / ``SRNegModel_Multi`` -> ``MCLIRModel`` with ``mclir.base_model: SRModel``;
  ``SwinIRNegModel`` / ``SwinIRNegModel_Multi`` -> ``SwinIRModel``; ``ImageRestorationModel_FFANet_Neg_Multi`` and
  its ``_Adaptive_DDP`` variant -> :class:`RawValidationSRModel` (validates the raw network, as they do).
* ``train.neg_iter``, ``neg_decay``, ``neg_start`` -> ``mclir.hook`` with ``pairing: official_reversed``;
  ``train.neg_t`` (adaptive type, refresh decay fixed at 0.001) -> ``adaptive_threshold``, ``adaptive_decay``.
* ``train.pixel_opt`` + ``train.perceptual_opt`` (subtracted) -> ``train.pixel_opt: SPNLoss`` (the reconstruction
  loss -> ``rec_loss``, ``perceptual_weight`` -> ``neg_weight``).
* ``train.perceptual_pos_opt`` (FFA-Net types) -> ``train.perceptual_opt`` (added, as officially).
* ``train.use_grad_clip`` -> ``mclir.grad_clip``.

Keys the official model never reads (``use_grad_norm`` in its FFA-Net file, ``update_scaling``, ``path_neg`` of the
multi-negative types, ...) are dropped with a WARNING naming them; keys whose official behaviour the plugin cannot
give (``perceptual_contrastive_opt``, ``contrastive_opt``: the official repository registers no loss for them;
``network_g_net``; a pretrained negative in ``path_neg``; ``val.ensemble``, ``val.grids``; a style term in the
negative loss) stop the run with an error naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping

import torch
import yaml
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from mclir_plugin.models.mclir_model import MCLIRModel
from mclir_plugin.utils.option_schema import Integer
from mclir_plugin.utils.options import naming_the_file

# Official defaults of neg_start: SRNegModel 0.999 (almost all random), SRNegModel_Multi and its subclasses 0.01.
NEG_START_SINGLE, NEG_START_MULTI = 0.999, 0.01
ADAPTIVE_THRESHOLD, ADAPTIVE_DECAY = 0.022, 0.001  # official neg_t default and its hard-coded refresh decay
REC_LOSSES = {'L1Loss': 'l1', 'MSELoss': 'mse', 'CharbonnierLoss': 'charbonnier'}
PERCEPTUAL_TO_SPN = ('layer_weights', 'vgg_type', 'use_input_norm', 'range_norm')
# Every train key the official models add to BasicSR's; those a type does not read are reported as ignored.
OFFICIAL_TRAIN_KEYS = ('neg_iter', 'neg_decay', 'neg_start', 'update_scaling', 'neg_t', 'use_grad_clip',
                       'use_grad_norm', 'perceptual_opt', 'perceptual_pos_opt', 'perceptual_contrastive_opt',
                       'contrastive_opt')


@dataclasses.dataclass(frozen=True)
class OfficialType:
    """What one official model type does, as far as the translation needs it.

    Args:
        base_model: The plugin's ``mclir.base_model`` with the same validation/test behaviour.
        multi: A list of negatives (``*_Multi`` and FFA-Net types) rather than one (``neg_iter`` an integer).
        ffanet: Normalises the input with FFA-Net's mean/std in ``feed_data`` and reads ``perceptual_pos_opt`` and
            ``perceptual_contrastive_opt``.
        adaptive: Refreshes on the error spread (``neg_t``) instead of the interval schedule.
    """
    base_model: str
    multi: bool
    ffanet: bool = False
    adaptive: bool = False

    def reads(self) -> set[str]:
        """The official train keys this type reads."""
        keys = {'neg_iter', 'neg_decay', 'neg_start', 'use_grad_clip', 'perceptual_opt'}
        keys |= {'perceptual_pos_opt', 'perceptual_contrastive_opt'} if self.ffanet else set()
        keys |= {'contrastive_opt'} if not self.multi else set()
        keys |= {'neg_t'} if self.adaptive else set()
        return keys


OFFICIAL_TYPES = {
    'SRNegModel': OfficialType('SRModel', multi=False),
    'SwinIRNegModel': OfficialType('SwinIRModel', multi=False),
    'SRNegModel_Multi': OfficialType('SRModel', multi=True),
    'SwinIRNegModel_Multi': OfficialType('SwinIRModel', multi=True),
    'ImageRestorationModel_FFANet_Neg_Multi': OfficialType('RawValidationSRModel', multi=True, ffanet=True),
    'ImageRestorationModel_FFANet_Neg_Multi_Adaptive_DDP': OfficialType('RawValidationSRModel', multi=True,
                                                                        ffanet=True, adaptive=True),
}


@MODEL_REGISTRY.register()
class RawValidationSRModel(SRModel):
    """``SRModel`` that validates and tests the raw ``net_g`` even when it keeps an EMA copy.

    The official FFA-Net models update ``net_g_ema`` every step (``train.ema_decay``) and save it as ``params_ema``,
    but their ``test()`` runs ``net_g``: the validation numbers of the official run are the raw network's. This base
    model does the same; the EMA weights stay in every checkpoint for ``tools/test.py --param-key params_ema``.
    """

    def init_training_settings(self) -> None:
        super().init_training_settings()
        self._saved_only_ema = getattr(self, 'net_g_ema', None)

    def test(self) -> None:
        ema = getattr(self, 'net_g_ema', None)
        # Another network put in net_g_ema's place (MCLIRModel's picture of the negatives) is still evaluated.
        if ema is None or ema is not getattr(self, '_saved_only_ema', None):
            return super().test()
        del self.net_g_ema
        try:
            super().test()
        finally:
            self.net_g_ema = ema


@dataclasses.dataclass
class Translation:
    """An official option dict translated to the plugin's contract.

    Attributes:
        opt: The plugin option dict (``model_type: MCLIRModel``, ``mclir``, ``train.pixel_opt: SPNLoss``).
        official_type: The official ``model_type`` it came from.
        ignored: One message per official key that the official code itself ignores (dropped here too).
        notes: One message per translation that changes a value's form (the user may want to know).
    """
    opt: dict
    official_type: str
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def equivalent_yaml(self) -> str:
        """The contract's lines of :attr:`opt` (model type, ``mclir``, the losses) as YAML."""
        train = self.opt.get('train') or {}
        part = {'model_type': self.opt['model_type'], 'mclir': self.opt['mclir']}
        losses = {k: train[k] for k in ('pixel_opt', 'perceptual_opt') if train.get(k)}
        if losses:
            part['train'] = losses
        return to_yaml(part)


class _OptionFileDumper(yaml.SafeDumper):
    """Block mappings, and lists of scalars on one line (``neg_iter: [100, 200, 500, 1000]``), as option files are
    written by hand."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=flow)


_OptionFileDumper.add_representer(list, _represent_list)


def to_yaml(data: Any) -> str:
    """``data`` (OrderedDicts included) as block YAML in its own key order."""
    return yaml.dump(plain(data), Dumper=_OptionFileDumper, sort_keys=False, default_flow_style=False, width=110)


def plain(data: Any) -> Any:
    """``data`` with every mapping a plain dict and every tuple a list (what ``yaml.safe_dump`` accepts)."""
    if isinstance(data, Mapping):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    return data


def translate_official(opt: Mapping[str, Any]) -> Translation:
    """Translate an official option dict (``model_type`` one of :data:`OFFICIAL_TYPES`) to the plugin's contract.

    Args:
        opt: The official options, as BasicSR parses them or as ``yaml.safe_load`` reads the file. Not changed.

    Returns:
        The translation: a new option dict and the messages about dropped and reshaped keys.

    Raises:
        KeyError: ``model_type`` is not an official type.
        ValueError: A key whose official behaviour cannot be reproduced, or an invalid official value; the message
            names the key.
    """
    name = opt.get('model_type')
    if name not in OFFICIAL_TYPES:
        raise KeyError(f'model_type {name!r} is not an official MCLIR model type ({", ".join(OFFICIAL_TYPES)}).')
    kind = OFFICIAL_TYPES[name]
    new = copy.deepcopy(dict(opt))
    result = Translation(new, name)
    if 'mclir' in new:
        raise ValueError(f'An official option file (model_type {name}) has no mclir block; write either the '
                         'official keys or model_type: MCLIRModel with the mclir block, not both.')
    _check_top_level(new, kind, result)
    new['model_type'] = 'MCLIRModel'
    new['mclir'] = {'base_model': kind.base_model}
    train = new.get('train')
    if train is not None:
        new['train'] = _translate_train(dict(train), kind, result)
    # Put the mclir block next to model_type, as in the plugin's own files.
    order = ['name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'mclir']
    result.opt = {**{k: new[k] for k in order if k in new}, **{k: v for k, v in new.items() if k not in order}}
    return result


def _check_top_level(opt: dict, kind: OfficialType, result: Translation) -> None:
    name = result.official_type
    if opt.get('network_g_net'):
        raise ValueError(f'network_g_net ({name}): the official SRNegModel then builds a separate, never-refreshed '
                         'random negative; the plugin\'s negatives are always history copies of net_g. Remove it.')
    path_neg = opt.pop('path_neg', None) or {}
    if path_neg.get('pretrain_network_g_neg'):
        raise ValueError('path_neg.pretrain_network_g_neg: loading a negative from a file is not supported (the '
                         'official SRNegModel loads path.pretrain_network_g into net_g instead, a defect). The '
                         'negatives start from net_g (train.neg_start); remove the key, or load the network with '
                         'path.pretrain_network_g.')
    named = {k: v for k, v in path_neg.items() if isinstance(v, str) and v}
    if named:
        result.ignored.append(f'path_neg ({", ".join(f"{k}: {v}" for k, v in named.items())}) is ignored: '
                              f'{name} does not read it.')
    if opt.pop('complie', False):
        result.ignored.append('complie (torch.compile) is ignored: the network runs uncompiled (same results).')
    val = opt.get('val') or {}
    if val.get('ensemble'):
        raise ValueError(f'val.ensemble ({name}): the official self-ensemble validation is not supported; '
                         'validation runs the plain network. Remove the key.')
    if val.get('grids'):
        raise ValueError(f'val.grids ({name}): the official tiled validation fails there (self.scale is never set) '
                         'and is not supported. Remove the key.')
    network = opt.get('network_g') or {}
    if kind.base_model == 'SwinIRModel' and isinstance(val.get('window_size'), int) \
            and val['window_size'] > network.get('window_size', 0):
        raise ValueError(f"val.window_size {val['window_size']} ({name}): validation pads to network_g.window_size "
                         f"({network.get('window_size')}) here; a larger padding is not supported. Remove the key.")
    if kind.ffanet:
        if network.get('type') != 'FFANet':
            raise ValueError(f"network_g.type {network.get('type')!r} ({name}): this model normalises the input "
                             'with FFA-Net\'s mean/std before the network; the plugin does it inside FFANet '
                             '(input_norm), so network_g.type must be FFANet.')
        if network.get('input_norm') is False:
            raise ValueError(f'network_g.input_norm: false ({name}): the official model normalises the input, so '
                             'keep input_norm: true (the default).')
        if 'input_norm' not in network:
            network['input_norm'] = True
            result.notes.append('network_g.input_norm: true (FFANet normalises its input inside, as the official '
                                'model does in feed_data).')


def _translate_train(train: dict, kind: OfficialType, result: Translation) -> dict:
    name = result.official_type
    reads = kind.reads()
    official = {k: train.pop(k) for k in OFFICIAL_TRAIN_KEYS if k in train}
    for key, value in official.items():
        if key in reads or value in (None, False, {}):
            continue
        why = {'use_grad_norm': 'no official model reads it (they read use_grad_clip), so the official run does '
                                'not clip gradients either; set train.use_grad_clip to clip',
               'update_scaling': 'the official multi-negative models read it but never use it'}.get(key)
        result.ignored.append(f'train.{key} ({value}) is ignored: {why or f"{name} never reads it"}.')
    hook = _hook(official, kind, name)
    result.opt['mclir']['hook'] = hook
    clip = official.get('use_grad_clip')
    if clip:
        result.opt['mclir']['grad_clip'] = 1.0 if clip is True else clip  # officially the max norm (True = 1)
    for key in ('contrastive_opt', 'perceptual_contrastive_opt'):
        if key in reads and official.get(key):
            raise ValueError(f'train.{key} ({name}): the official repository registers no loss for this slot '
                             '(called as C(output, negative, gt)), so no official file can use it. The plugin\'s '
                             'peer losses take its place: pixel_opt type ContrastRatioLoss or InfoNCELoss in a '
                             'plugin option file (README, "Peer losses"). Remove the key.')
    train['pixel_opt'] = _spn_loss(train.get('pixel_opt'), official.get('perceptual_opt'), name, result)
    positive = official.get('perceptual_pos_opt') if 'perceptual_pos_opt' in reads else None
    if positive:
        if train.get('perceptual_opt'):
            raise ValueError(f'train.perceptual_pos_opt ({name}) becomes train.perceptual_opt, which is taken.')
        positive = dict(positive)
        if positive.get('style_weight'):
            result.ignored.append(f"train.perceptual_pos_opt.style_weight ({positive['style_weight']}) is ignored: "
                                  f'{name} adds only the perceptual term.')
            positive['style_weight'] = 0
        train['perceptual_opt'] = positive
        result.notes.append('train.perceptual_pos_opt -> train.perceptual_opt (added to the loss, as officially).')
    return train


def _hook(official: dict, kind: OfficialType, name: str) -> dict:
    """The ``mclir.hook`` block of the official negative keys."""
    neg_iter, neg_decay = official.get('neg_iter'), official.get('neg_decay')
    if kind.multi:
        if not isinstance(neg_iter, list) or not neg_iter:
            raise ValueError(f'train.neg_iter ({name}): one refresh interval per negative, as a list (for example '
                             f'[100, 200, 500, 1000]), got {neg_iter!r}.')
        if neg_decay is None:
            raise ValueError(f'train.neg_decay ({name}): required, one decay per negative (the official model '
                             'indexes it), for example [0.1, 0.1, 0.1, 0.1].')
    else:
        Integer(low=1, note=f'{name} has one negative: one refresh interval (the official default 0 divides by '
                            f'zero); use {name}_Multi for a list')(neg_iter, 'train.neg_iter')
    hook = {'type': 'HistoryNegativeHook', 'neg_iter': neg_iter if kind.multi else [neg_iter],
            'neg_decay': 0 if neg_decay is None else neg_decay,
            'neg_start': official.get('neg_start', NEG_START_MULTI if kind.multi else NEG_START_SINGLE),
            'pairing': 'official_reversed'}
    if kind.adaptive:
        hook['adaptive_threshold'] = official.get('neg_t', ADAPTIVE_THRESHOLD)
        hook['adaptive_decay'] = ADAPTIVE_DECAY
    return hook


def _spn_loss(pixel: Mapping | None, perceptual: Mapping | None, name: str, result: Translation) -> dict:
    """``train.pixel_opt: SPNLoss`` from the official reconstruction loss and subtracted perceptual loss."""
    if not pixel:
        raise ValueError(f'train.pixel_opt ({name}): a reconstruction loss (L1Loss, ...) is needed; the plugin '
                         'does not train on the negative term alone.')
    pixel = dict(pixel)
    rec_type = pixel.pop('type', None)
    if rec_type not in REC_LOSSES:
        raise ValueError(f'train.pixel_opt.type {rec_type!r} ({name}): SPNLoss holds the reconstruction term as '
                         f'one of {", ".join(REC_LOSSES)}.')
    spn = {'type': 'SPNLoss', 'loss_weight': pixel.pop('loss_weight', 1.0), 'reduction': pixel.pop('reduction', 'mean'),
           'rec_loss': REC_LOSSES[rec_type]}
    if rec_type == 'CharbonnierLoss' and pixel.get('eps', 1e-12) == 1e-12:
        pixel.pop('eps', None)
    if pixel:
        raise ValueError(f'train.pixel_opt.{next(iter(pixel))} ({name}): not supported by SPNLoss\'s '
                         'reconstruction term (loss_weight and reduction are).')
    if not perceptual:
        spn['neg_weight'] = 0.0
        result.notes.append(f'No train.perceptual_opt: {name} then trains without the negative term '
                            '(neg_weight: 0); the negatives are still kept and refreshed.')
        return spn
    perceptual = dict(perceptual)
    loss_type = perceptual.pop('type', 'PerceptualLoss')
    if loss_type != 'PerceptualLoss':
        raise ValueError(f'train.perceptual_opt.type {loss_type!r} ({name}): the subtracted negative term is '
                         'BasicSR\'s PerceptualLoss in the official code; other losses are not supported.')
    if perceptual.pop('style_weight', 0):
        raise ValueError(f'train.perceptual_opt.style_weight ({name}): a style (Gram) term in the negative loss is '
                         'not supported by SPNLoss; set it to 0 (the official file does).')
    criterion = perceptual.pop('criterion', 'l1')
    if criterion != 'l1':
        raise ValueError(f'train.perceptual_opt.criterion {criterion!r} ({name}): SPN is the L1 distance of VGG '
                         'features; only l1 is supported.')
    spn['neg_weight'] = perceptual.pop('perceptual_weight', 1.0)
    spn.update({k: perceptual.pop(k) for k in PERCEPTUAL_TO_SPN if k in perceptual})
    if perceptual:
        raise ValueError(f'train.perceptual_opt.{next(iter(perceptual))} ({name}): not a key of BasicSR\'s '
                         'PerceptualLoss that SPNLoss supports.')
    return spn


def log_translation(result: Translation) -> None:
    """Log the equivalent plugin lines (INFO) and each ignored key (WARNING)."""
    logger = get_root_logger()
    logger.info(f'Official model type {result.official_type} runs as MCLIRModel with these equivalent plugin '
                f'options (tools/convert_official_options.py writes the whole file):\n{result.equivalent_yaml()}')
    for note in result.notes:
        logger.info(f'Official options: {note}')
    for message in result.ignored:
        logger.warning(f'Official options: {message}')


def build_official_model(opt: dict):
    """Build an official model type as ``MCLIRModel``.

    Args:
        opt: The parsed options (``model_type`` an official type). Replaced in place by their translation, because
            BasicSR's training pipeline keeps using this dict after ``build_model``.

    Returns:
        The ``MCLIR<base_model>`` model. A ``num_gpu`` above 0 without CUDA becomes 0 (CPU), with a warning: the
        official files say ``num_gpu: 1``.
    """
    try:
        result = translate_official(opt)
    except (KeyError, ValueError) as err:
        raise naming_the_file(err) from err
    if result.opt.get('num_gpu') not in (0, None) and not torch.cuda.is_available():
        # The official files say num_gpu: 1; BasicSR would then put the model on a CUDA device that is not there.
        result.ignored.append(f"num_gpu: {result.opt['num_gpu']} without CUDA: the model runs on the CPU "
                              '(num_gpu: 0).')
        result.opt['num_gpu'] = 0
    log_translation(result)
    opt.clear()  # in place: BasicSR's pipeline keeps using the same dict after build_model
    opt.update(result.opt)
    return MCLIRModel(opt)


def _register(name: str) -> None:
    def build(opt: dict):
        return build_official_model(opt)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f'The official ``{name}``: translated to ``MCLIRModel`` with ``mclir.base_model: '
                     f'{OFFICIAL_TYPES[name].base_model}`` (see :mod:`mclir_plugin.models.official_models`).')
    MODEL_REGISTRY.register(build)


for _name in OFFICIAL_TYPES:
    _register(_name)
