"""BasicSR models that place tensors on 'cuda' unconditionally run on CPU (mclir_plugin.compat), with and without SPN.

The end-to-end checks (Real-ESRGAN and video option files through ``tools/train.py``) are in
``tests/commands/test_shipped_options.py`` and ``tests/models/test_model_families.py``; these are the in-process, tiny ones.
"""
from __future__ import annotations

import pytest
import torch

from basicsr.models import build_model
from basicsr.utils.diffjpeg import DiffJPEG
from basicsr.utils.registry import MODEL_REGISTRY

from mclir_plugin.compat import cuda_calls_to, resolve_model_type


def test_model_type_names_resolve_as_basicsr_registry_does():
    assert resolve_model_type('SRModel') == 'SRModel'
    # BasicSR 1.4.2's own option files say RealESRGANModel; it registers RealESRGANModel_basicsr
    for name in ('RealESRNetModel', 'RealESRGANModel'):
        expected = name if name in MODEL_REGISTRY else f'{name}_basicsr'  # the realesrgan package's, if imported
        assert resolve_model_type(name) == expected and MODEL_REGISTRY.get(expected) is MODEL_REGISTRY.get(name)
    assert resolve_model_type('RealESRGANModel_basicsr') == 'RealESRGANModel_basicsr'
    assert resolve_model_type('NoSuchModel') is None


def test_explicit_cuda_placements_go_to_the_model_device():
    with cuda_calls_to('cpu'):  # a CPU model: redirected whether or not this machine has a GPU
        made = torch.zeros(2, device='cuda')
        moved = torch.ones(2).cuda()
        to = torch.ones(2).to('cuda:0')
        to_device = torch.ones(2).to(device=torch.device('cuda'))
        module = torch.nn.Linear(2, 2).cuda()
        with cuda_calls_to('cpu'):  # re-entered by a wrapped method calling another
            inner = torch.empty(1, device='cuda')
    assert {t.device.type for t in (made, moved, to, to_device, inner, module.weight, module.bias)} == {'cpu'}
    if not torch.cuda.is_available():  # outside the block, CUDA placements fail again as before
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1, device='cuda')


def test_diffjpeg_output_is_contiguous():
    out = DiffJPEG(differentiable=False)(torch.rand(1, 3, 16, 16), quality=torch.tensor([50.0]))
    assert out.is_contiguous() and out.shape == (1, 3, 16, 16)


def _pulse(batch: int, size: int = 7) -> torch.Tensor:
    kernel = torch.zeros(batch, size, size)
    kernel[:, size // 2 - 1:size // 2 + 2, size // 2 - 1:size // 2 + 2] = 1 / 9
    return kernel


@pytest.mark.parametrize('model_type', ['RealESRNetModel', 'RealESRGANModel'])
def test_plain_realesrgan_models_build_and_degrade_on_cpu(model_type, tmp_path):
    """BasicSR's option-file name (registry fallback), no MCLIR: __init__ (.cuda() DiffJPEG/USMSharp), feed_data's
    degradation and the training-pair queue (.cuda()), enqueue then dequeue, all on CPU."""
    gt_size, batch = 32, 2
    degradation = {'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.5, 1.5], 'gaussian_noise_prob': 0.5,
                   'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4,
                   'jpeg_range': [30, 95], 'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3],
                   'resize_range2': [0.5, 1.2], 'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25],
                   'poisson_scale_range2': [0.05, 2.5], 'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95]}
    tiny_g = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'num_grow_ch': 4}
    train = {'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10]},
             'pixel_opt': {'type': 'L1Loss'}}
    opt = {'model_type': model_type, 'scale': 4, 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
           'world_size': 1, 'gt_size': gt_size, 'queue_size': 2 * batch, 'network_g': tiny_g,
           'path': {'experiments_root': str(tmp_path)}, 'train': train, **degradation}
    if model_type == 'RealESRGANModel':
        opt['network_d'] = {'type': 'UNetDiscriminatorSN_basicsr', 'num_in_ch': 3, 'num_feat': 4}
        train.update(optim_d={'type': 'Adam', 'lr': 1e-4}, gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla'})
        opt.update(l1_gt_usm=True, percep_gt_usm=True, gan_gt_usm=False)
    else:
        opt['gt_usm'] = True
    model = build_model(opt)
    assert type(model).__name__ == model_type and model.device.type == 'cpu'
    assert next(model.jpeger.parameters(), torch.zeros(0)).device.type == 'cpu'
    torch.manual_seed(0)
    data = {'gt': torch.rand(batch, 3, gt_size, gt_size), 'kernel1': _pulse(batch), 'kernel2': _pulse(batch),
            'sinc_kernel': _pulse(batch)}
    for _ in range(3):  # fill the queue (2 batches), then take from it
        model.feed_data(data)
    assert model.lq.shape == (batch, 3, gt_size // 4, gt_size // 4) and model.lq.device.type == 'cpu'
    assert model.queue_lr.device.type == 'cpu' and model.queue_ptr == 2 * batch
    assert torch.isfinite(model.lq).all() and 0 <= model.lq.min() and model.lq.max() <= 1
