"""BasicSR 1.4.2's own training recipes, restated as the facts that matter, and how the tests turn them into SPN runs.

Each :class:`Recipe` restates one of BasicSR's training option files (tag v1.4.2, commit
651835a1b9d38dbbdaf45750f56906be2364f01a, ``options/train/<source>``): model type, networks, the ``train`` block
(losses, optimizers, schedulers, GAN settings), the training dataset with its keys and the model's own top-level
keys (Real-ESRGAN's degradation settings). Dataset paths are the file's own, relative to the run's root, so that
:func:`write_recipe_data` can write tiny data exactly where the file looks for it. Left out: validation datasets
(the tests train only), and ``logger``/``dist_params`` (BasicSR's defaults are kept by :func:`spn_run_options`).

:func:`spn_run_options` then does what the contract asks of a user (``model_type: MCLIRModel``, ``mclir.base_model``
= the file's model type, an ``mclir.hook``, ``pixel_opt`` -> ``SPNLoss`` keeping its weight and reduction) and
shrinks size only (CPU, tiny networks and patches, batch 1, no workers, 3 iterations, no pretrained weights).

:func:`train_in_process` runs ``tools/train.py``'s entry point in the test process, for the tests whose point is not
a process of their own; :func:`drop_after` turns a finished run's folder into one stopped at a checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np

# Pieces the files share, written once.
ADAM = {'type': 'Adam', 'weight_decay': 0, 'betas': [0.9, 0.99]}
L1 = {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
DIV2K_X4 = {'dataroot_gt': 'datasets/DIV2K/DIV2K_train_HR_sub',
            'dataroot_lq': 'datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub'}
DF2K_X4 = {'dataroot_gt': 'datasets/DF2K/DIV2K_train_HR_sub',
           'dataroot_lq': 'datasets/DF2K/DIV2K_train_LR_bicubic_X4_sub',
           'meta_info_file': 'basicsr/data/meta_info/meta_info_DIV2K800sub_GT.txt'}
DIV2K_META = 'basicsr/data/meta_info/meta_info_DIV2K800sub_GT.txt'  # BasicSR's repository file, relative to the root
REDS_META = 'basicsr/data/meta_info/meta_info_REDS_GT.txt'
DF2K_META = 'datasets/DF2K/meta_info/meta_info_DF2Kmultiscale+OST_sub.txt'


def paired(gt_size: int, batch: int, enlarge: int, **paths) -> dict:
    return {'name': 'DIV2K', 'type': 'PairedImageDataset', **paths, 'filename_tmpl': '{}',
            'io_backend': {'type': 'disk'}, 'gt_size': gt_size, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': 6,
            'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': enlarge, 'prefetch_mode': None}


def multistep(milestones: list, total: int, gamma: float = 0.5) -> dict:
    return {'scheduler': {'type': 'MultiStepLR', 'milestones': milestones, 'gamma': gamma}, 'total_iter': total,
            'warmup_iter': -1}


def cosine(periods: list, total: int) -> dict:
    return {'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': periods, 'restart_weights': [1] * len(periods),
                          'eta_min': 1e-7}, 'total_iter': total, 'warmup_iter': -1}


def perceptual(layer_weights: dict) -> dict:
    return {'type': 'PerceptualLoss', 'layer_weights': layer_weights, 'vgg_type': 'vgg19', 'use_input_norm': True,
            'range_norm': False, 'perceptual_weight': 1.0, 'style_weight': 0, 'criterion': 'l1'}


def gan(loss_weight: float) -> dict:
    return {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
            'loss_weight': loss_weight}


# Real-ESRGAN's second-order degradation (top-level keys read by the model's feed_data), x4plus files.
REAL_DEGRADATION = {
    'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5, 'noise_range': [1, 30],
    'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95], 'second_blur_prob': 0.8,
    'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.3, 1.2], 'gaussian_noise_prob2': 0.5,
    'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5], 'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95],
    'gt_size': 256, 'queue_size': 180}
KERNELS = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
REAL_DATASET = {
    'name': 'DF2K+OST', 'type': 'RealESRGANDataset', 'dataroot_gt': 'datasets/DF2K', 'meta_info': DF2K_META,
    'io_backend': {'type': 'disk'},
    'blur_kernel_size': 21, 'kernel_list': KERNELS, 'kernel_prob': [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    'sinc_prob': 0.1, 'blur_sigma': [0.2, 3], 'betag_range': [0.5, 4], 'betap_range': [1, 2],
    'blur_kernel_size2': 21, 'kernel_list2': KERNELS, 'kernel_prob2': [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    'sinc_prob2': 0.1, 'blur_sigma2': [0.2, 1.5], 'betag_range2': [0.5, 4], 'betap_range2': [1, 2],
    'final_sinc_prob': 0.8, 'gt_size': 256, 'use_hflip': True, 'use_rot': False, 'num_worker_per_gpu': 5,
    'batch_size_per_gpu': 12, 'dataset_enlarge_ratio': 1, 'prefetch_mode': None}
RRDB_X4PLUS = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32}
TINY_RRDB = {'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}
REDS_TRAIN = {'name': 'REDS', 'dataroot_gt': 'datasets/REDS/train_sharp', 'meta_info_file': REDS_META,
              'val_partition': 'REDS4', 'io_backend': {'type': 'disk'}, 'gt_size': 256, 'interval_list': [1],
              'random_reverse': False, 'use_hflip': True, 'use_rot': True, 'prefetch_mode': None}


@dataclass(frozen=True)
class Recipe:
    """One BasicSR training file: its facts, how the tests shrink it, and the losses its own step logs."""
    name: str                   # the test id
    source: str                 # path under options/train/ in BasicSR v1.4.2
    options: dict[str, Any]     # the file's options (validation datasets, logger and dist_params left out)
    tiny: dict[str, Any]        # size-only changes, merged into the options (nested dicts merge key by key)
    logged: tuple[str, ...]     # keys the base model's own step puts in log_dict
    has_net_d: bool = False
    notes: str = ''


RECIPES = [
    Recipe('MSRResNet', 'SRResNet_SRGAN/train_MSRResNet_x4.yml', {
        'name': '001_MSRResNet_x4_f64b16_DIV2K_1000k_B16G1_wandb', 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 1,
        'manual_seed': 0,
        'datasets': {'train': paired(128, 16, 100, **DF2K_X4)},
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16,
                      'upscale': 4},
        'path': {'pretrain_network_g': None, 'param_key_g': 'params', 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 2e-4},
                  **cosine([250000] * 4, 1000000), 'pixel_opt': dict(L1)},
    }, {'network_g': {'num_feat': 8, 'num_block': 1}, 'datasets': {'train': {'gt_size': 32}}}, ('l_pix',)),
    Recipe('EDSR', 'EDSR/train_EDSR_Mx4.yml', {
        'name': '203_EDSR_Mx4_f64b16_DIV2K_300k_B16G1_201pretrain_wandb', 'model_type': 'SRModel', 'scale': 4,
        'num_gpu': 1, 'manual_seed': 10,
        'datasets': {'train': paired(192, 16, 100, **DIV2K_X4)},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16, 'upscale': 4,
                      'res_scale': 1, 'img_range': 255., 'rgb_mean': [0.4488, 0.4371, 0.4040]},
        'path': {'pretrain_network_g': 'experiments/201_EDSR_Mx2_f64b16_DIV2K_300k_B16G1_wandb/models/net_g_300000.pth',
                 'strict_load_g': False, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 1e-4}, **multistep([200000], 300000),
                  'pixel_opt': dict(L1)},
    }, {'network_g': {'num_feat': 8, 'num_block': 1}, 'datasets': {'train': {'gt_size': 32}}}, ('l_pix',)),
    Recipe('RCAN', 'RCAN/train_RCAN_x2.yml', {
        'name': '201_RCANx2_scratch_DIV2K_rand0', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 1, 'manual_seed': 10,
        'datasets': {'train': paired(96, 16, 100, dataroot_gt='datasets/DIV2K/DIV2K_train_HR_sub',
                                     dataroot_lq='datasets/DIV2K/DIV2K_train_LR_bicubic/X2_sub')},
        'network_g': {'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_group': 10,
                      'num_block': 20, 'squeeze_factor': 16, 'upscale': 2, 'res_scale': 1, 'img_range': 255.,
                      'rgb_mean': [0.4488, 0.4371, 0.4040]},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 1e-4}, **multistep([200000], 300000),
                  'pixel_opt': dict(L1)},
    }, {'network_g': {'num_feat': 8, 'num_group': 1, 'num_block': 1, 'squeeze_factor': 4},
        'datasets': {'train': {'gt_size': 32}}}, ('l_pix',),
        notes='BasicSR 1.4.2 ships RCAN x2 only (no train_RCAN_x4.yml).'),
    Recipe('ECBSR', 'ECBSR/train_ECBSR_x4_m4c16_prelu.yml', {
        'name': '100_train_ECBSR_x4_m4c16_prelu', 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 1, 'manual_seed': 0,
        'datasets': {'train': {**paired(256, 32, 10, dataroot_gt='datasets/DF2K/DIV2K_train_HR_sub.lmdb',
                                        dataroot_lq='datasets/DF2K/DIV2K_train_LR_bicubic_X4_sub.lmdb',
                                        meta_info_file=DIV2K_META),
                               'io_backend': {'type': 'lmdb'}, 'color': 'y', 'num_worker_per_gpu': 12}},
        'network_g': {'type': 'ECBSR', 'num_in_ch': 1, 'num_out_ch': 1, 'num_block': 4, 'num_channel': 16,
                      'with_idt': False, 'act_type': 'prelu', 'scale': 4},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0, 'optim_g': {**ADAM, 'lr': 5e-4}, **multistep([1600000], 1600000, gamma=1),
                  'pixel_opt': dict(L1)},
    }, {'network_g': {'num_block': 1, 'num_channel': 4}, 'datasets': {'train': {'gt_size': 32}}}, ('l_pix',),
        notes='Luma only (color: y): SPN repeats the channel for VGG.'),
    Recipe('SwinIR', 'SwinIR/train_SwinIR_SRx4_scratch.yml', {
        'name': 'train_SwinIR_SRx4_scratch_P48W8_DIV2K_500k_B4G8', 'model_type': 'SwinIRModel', 'scale': 4,
        'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {'train': {**paired(192, 4, 1, **DF2K_X4), 'use_shuffle': True}},
        'network_g': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 48, 'window_size': 8,
                      'img_range': 1., 'depths': [6] * 6, 'embed_dim': 180, 'num_heads': [6] * 6, 'mlp_ratio': 2,
                      'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 2e-4},
                  **multistep([250000, 400000, 450000, 475000], 500000), 'pixel_opt': dict(L1)},
    }, {'network_g': {'img_size': 8, 'window_size': 4, 'depths': [1], 'embed_dim': 12, 'num_heads': [2]},
        'datasets': {'train': {'gt_size': 32}}}, ('l_pix',)),
    Recipe('MSRGAN', 'SRResNet_SRGAN/train_MSRGAN_x4.yml', {
        'name': '004_MSRGAN_x4_f64b16_DIV2K_400k_B16G1_wandb', 'model_type': 'SRGANModel', 'scale': 4, 'num_gpu': 1,
        'manual_seed': 0,
        'datasets': {'train': paired(128, 16, 100, **DIV2K_X4)},
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16,
                      'upscale': 4},
        'network_d': {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 64},
        'path': {'pretrain_network_g': 'experiments/001_MSRResNet_x4_f64b16_DIV2K_1000k_B16G1_wandb/models/'
                                       'net_g_1000000.pth', 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 1e-4}, 'optim_d': {**ADAM, 'lr': 1e-4},
                  **multistep([50000, 100000, 200000, 300000], 400000),
                  'pixel_opt': {**L1, 'loss_weight': 1e-2}, 'perceptual_opt': perceptual({'conv5_4': 1}),
                  'gan_opt': gan(5e-3), 'net_d_iters': 1, 'net_d_init_iters': 0},
    }, {'network_g': {'num_feat': 8, 'num_block': 1}, 'network_d': {'num_feat': 8}},  # the discriminator needs 128
        ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'out_d_real', 'l_d_fake', 'out_d_fake'), has_net_d=True),
    Recipe('ESRGAN', 'ESRGAN/train_ESRGAN_x4.yml', {
        'name': '052_ESRGAN_x4_f64b23_DIV2K_400k_B16G1_051pretrain_wandb', 'model_type': 'ESRGANModel', 'scale': 4,
        'num_gpu': 1, 'manual_seed': 0,
        'datasets': {'train': paired(128, 16, 100, **DIV2K_X4)},
        'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23},
        'network_d': {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 64},
        'path': {'pretrain_network_g': 'experiments/051_RRDBNet_PSNR_x4_f64b23_DIV2K_1000k_B16G1_wandb/models/'
                                       'net_g_1000000.pth', 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 1e-4}, 'optim_d': {**ADAM, 'lr': 1e-4},
                  **multistep([50000, 100000, 200000, 300000], 400000),
                  'pixel_opt': {**L1, 'loss_weight': 1e-2}, 'perceptual_opt': perceptual({'conv5_4': 1}),
                  'gan_opt': gan(5e-3), 'net_d_iters': 1, 'net_d_init_iters': 0},
    }, {'network_g': {'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}, 'network_d': {'num_feat': 8}},
        ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'out_d_real', 'l_d_fake', 'out_d_fake'), has_net_d=True),
    Recipe('RealESRNet_x4plus', 'RealESRGAN/train_realesrnet_x4plus.yml', {
        'name': 'train_RealESRNetx4plus_1000k_B12G4', 'model_type': 'RealESRNetModel', 'scale': 4, 'num_gpu': 'auto',
        'manual_seed': 0, 'gt_usm': True, **REAL_DEGRADATION,
        'datasets': {'train': dict(REAL_DATASET)},
        'network_g': dict(RRDB_X4PLUS),
        'path': {'pretrain_network_g': 'experiments/pretrained_models/ESRGAN/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth',
                 'param_key_g': 'params_ema', 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 2e-4}, **multistep([1000000], 1000000),
                  'pixel_opt': dict(L1)},
    }, {'network_g': TINY_RRDB, 'gt_size': 32, 'queue_size': 2, 'datasets': {'train': {'gt_size': 32}}},
        ('l_pix',), notes='queue_size 2, batch 1: the third iteration takes the training-pair queue\'s dequeue path.'),
    Recipe('RealESRGAN_x4plus', 'RealESRGAN/train_realesrgan_x4plus.yml', {
        'name': 'train_RealESRGANx4plus_400k_B12G4', 'model_type': 'RealESRGANModel', 'scale': 4, 'num_gpu': 'auto',
        'manual_seed': 0, 'l1_gt_usm': True, 'percep_gt_usm': True, 'gan_gt_usm': False, **REAL_DEGRADATION,
        'datasets': {'train': dict(REAL_DATASET)},
        'network_g': dict(RRDB_X4PLUS),
        'network_d': {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 64, 'skip_connection': True},
        'path': {'pretrain_network_g': 'experiments/pretrained_models/RealESRNet_x4plus.pth',
                 'param_key_g': 'params_ema',
                 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 1e-4}, 'optim_d': {**ADAM, 'lr': 1e-4},
                  **multistep([400000], 400000), 'pixel_opt': dict(L1),
                  'perceptual_opt': perceptual({'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1,
                                                'conv5_4': 1}),
                  'gan_opt': gan(1e-1), 'net_d_iters': 1, 'net_d_init_iters': 0},
    }, {'network_g': TINY_RRDB, 'network_d': {'num_feat': 8}, 'gt_size': 32, 'queue_size': 2,
        'datasets': {'train': {'gt_size': 32}}},
        ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'out_d_real', 'l_d_fake', 'out_d_fake'), has_net_d=True),
    Recipe('EDVR', 'EDVR/train_EDVR_M_x4_SR_REDS_woTSA.yml', {
        'name': '101_EDVR_M_x4_SR_REDS_woTSA_600k_B4G8_valREDS4_wandb', 'model_type': 'EDVRModel', 'scale': 4,
        'num_gpu': 'auto', 'manual_seed': 10,
        'datasets': {'train': {**REDS_TRAIN, 'type': 'REDSDataset', 'dataroot_lq': 'datasets/REDS/train_sharp_bicubic',
                               'dataroot_flow': None, 'num_frame': 5, 'num_worker_per_gpu': 3,
                               'batch_size_per_gpu': 4, 'dataset_enlarge_ratio': 200}},
        'network_g': {'type': 'EDVR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_frame': 5,
                      'deformable_groups': 8, 'num_extract_block': 5, 'num_reconstruct_block': 10,
                      'center_frame_idx': None, 'hr_in': False, 'with_predeblur': False, 'with_tsa': False},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 4e-4}, **cosine([150000] * 4, 600000),
                  'dcn_lr_mul': 1, 'pixel_opt': {'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'sum'}},
    }, {'network_g': {'num_feat': 8, 'num_frame': 3, 'deformable_groups': 1, 'num_extract_block': 1,
                      'num_reconstruct_block': 1},
        'datasets': {'train': {'num_frame': 3, 'gt_size': 32}}}, ('l_pix',),
        notes='Input 5-D clips, output the centre frame (4-D).'),
    Recipe('BasicVSR', 'BasicVSR/train_BasicVSR_REDS.yml', {
        'name': 'BasicVSR_REDS', 'model_type': 'VideoRecurrentModel', 'scale': 4, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {'train': {**REDS_TRAIN, 'type': 'REDSRecurrentDataset',
                               'dataroot_lq': 'datasets/REDS/train_sharp_bicubic/X4', 'test_mode': False,
                               'num_frame': 15, 'num_worker_per_gpu': 6, 'batch_size_per_gpu': 4,
                               'dataset_enlarge_ratio': 200}},
        'network_g': {'type': 'BasicVSR', 'num_feat': 64, 'num_block': 30,
                      'spynet_path': 'experiments/pretrained_models/flownet/spynet_sintel_final-3d2a1287.pth'},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {**ADAM, 'lr': 2e-4}, **cosine([300000], 300000),
                  'fix_flow': 5000, 'flow_lr_mul': 0.125,
                  'pixel_opt': {'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'mean'}},
    }, {'network_g': {'num_feat': 8, 'num_block': 1, 'spynet_path': None},  # SpyNet needs LQ > 32 px: 136 / 4 = 34
        'datasets': {'train': {'num_frame': 2, 'gt_size': 136}}}, ('l_pix',),
        notes='Input and output 5-D clips: VGG over the frames. SpyNet random (no pretrained flow file).'),
]
RECIPE_BY_NAME = {r.name: r for r in RECIPES}
REC_LOSS = {'L1Loss': 'l1', 'CharbonnierLoss': 'charbonnier', 'MSELoss': 'mse'}  # BasicSR criterion -> SPN's rec_loss


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in place, nested dicts key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def contract_lines(opt: dict, neg_iter: tuple[int, ...] = (1, 2), neg_weight: float = 0.001) -> dict:
    """The contract's change to a BasicSR option dict: MCLIRModel over the file's model type, SPN as ``pixel_opt``."""
    opt = copy.deepcopy(opt)
    opt['mclir'] = {'base_model': opt['model_type'],
                    'hook': {'type': 'HistoryNegativeHook', 'neg_iter': list(neg_iter), 'neg_decay': 0.1,
                             'neg_start': 0.1}}
    opt['model_type'] = 'MCLIRModel'
    pix = opt['train']['pixel_opt']
    spn = {'type': 'SPNLoss', 'loss_weight': pix['loss_weight'], 'reduction': pix['reduction'],
           'neg_weight': neg_weight}
    if REC_LOSS[pix['type']] != 'l1':  # keep the file's criterion (EDVR, BasicVSR: Charbonnier)
        spn['rec_loss'] = REC_LOSS[pix['type']]
    opt['train']['pixel_opt'] = spn
    return opt


def shrink(opt: dict, recipe: Recipe, total_iter: int = 3) -> dict:
    """Size-only changes: CPU, the recipe's tiny networks and patches, batch 1, no workers, no pretrained weights."""
    opt = merge(copy.deepcopy(opt), recipe.tiny)
    opt['num_gpu'] = 0  # the files' own comment: "set num_gpu: 0 for cpu mode"
    merge(opt['datasets']['train'], {'num_worker_per_gpu': 0, 'batch_size_per_gpu': 1})
    opt['path']['pretrain_network_g'] = None  # no pretrained files here
    opt['train']['total_iter'] = total_iter
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 5000, 'use_tb_logger': False,
                     'wandb': {'project': None, 'resume_id': None}}
    return opt


def spn_run_options(recipe: Recipe, **contract) -> dict:
    """The recipe as a user would run it with SPN on a CPU: contract's lines added, size shrunk."""
    return shrink(contract_lines(recipe.options, **contract), recipe)


# ----------------------------------------------------------------------------------------------------------------
# Tiny data in each dataset type's real layout, at the files' own (relative) paths under ``root``.

PAIRED_NAMES = ('0001_s001', '0002_s001')


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    small = rng.integers(0, 256, (max(size // 8, 2), max(size // 8, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _write(path: str, img: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def _down(img: np.ndarray, scale: int) -> np.ndarray:
    return cv2.resize(img, (img.shape[1] // scale, img.shape[0] // scale), interpolation=cv2.INTER_AREA)


def write_recipe_data(root: str, seed: int = 0) -> None:
    """Write every recipe's training data under ``root`` (about 0.5 s).

    * PairedImageDataset folders (DIV2K/DF2K ``*_HR_sub`` and bicubic ``X4_sub``/``X2_sub``, 128 px GT, the GAN
      discriminator's size) and BasicSR's ``meta_info_DIV2K800sub_GT.txt`` naming them; the same pairs as lmdb
      (BasicSR's own writer, ``meta_info.txt`` inside) for ECBSR.
    * RealESRGANDataset: ``datasets/DF2K/DF2K_HR_sub/*.png`` and its meta_info listing paths relative to the root.
    * REDS: clip ``001`` (not in the REDS4 validation partition) of 100 frames ``%08d.png`` (the datasets assume 100),
      GT 136 px in ``train_sharp``, bicubic x4 in ``train_sharp_bicubic/X4``, and ``meta_info_REDS_GT.txt``. EDVR's
      file reads ``train_sharp_bicubic/<clip>`` (no ``X4``): a link ``train_sharp_bicubic/001 -> X4/001`` serves it.
    """
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    rng = np.random.default_rng(seed)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    for name in PAIRED_NAMES:
        gt = _smooth(rng, 128)
        for hr in ('datasets/DIV2K/DIV2K_train_HR_sub', 'datasets/DF2K/DIV2K_train_HR_sub'):
            _write(j(hr, f'{name}.png'), gt)
        for lq, scale in (('datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub', 4),
                          ('datasets/DIV2K/DIV2K_train_LR_bicubic/X2_sub', 2),
                          ('datasets/DF2K/DIV2K_train_LR_bicubic_X4_sub', 4)):
            _write(j(lq, f'{name}.png'), _down(gt, scale))
        _write(j('datasets/DF2K/DF2K_HR_sub', f'{name}.png'), gt)
    os.makedirs(j(os.path.dirname(DIV2K_META)), exist_ok=True)
    with open(j(DIV2K_META), 'w') as f:
        f.writelines(f'{name}.png (128,128,3)\n' for name in PAIRED_NAMES)
    os.makedirs(j(os.path.dirname(DF2K_META)), exist_ok=True)
    with open(j(DF2K_META), 'w') as f:
        f.writelines(f'DF2K_HR_sub/{name}.png\n' for name in PAIRED_NAMES)
    for folder in ('DIV2K_train_HR_sub', 'DIV2K_train_LR_bicubic_X4_sub'):
        src = j('datasets/DF2K', folder)
        make_lmdb_from_imgs(src, f'{src}.lmdb', [f'{n}.png' for n in PAIRED_NAMES], list(PAIRED_NAMES))

    base = _smooth(rng, 160)
    for t in range(100):  # a slow pan: frame t is the crop shifted by t % 8 pixels
        gt = np.ascontiguousarray(base[t % 8:t % 8 + 136, (t // 8) % 8:(t // 8) % 8 + 136])
        _write(j('datasets/REDS/train_sharp/001', f'{t:08d}.png'), gt)
        _write(j('datasets/REDS/train_sharp_bicubic/X4/001', f'{t:08d}.png'), _down(gt, 4))
    os.symlink(os.path.join('X4', '001'), j('datasets/REDS/train_sharp_bicubic/001'))
    with open(j(REDS_META), 'w') as f:
        f.write('001 100 (136,136,3)\n')


def basicsr_iterations(loader, sampler, total_iter: int):
    """``(current_iter, batch)`` as ``basicsr/train.py`` walks them: epoch after epoch, reshuffled, up to total_iter."""
    current_iter, epoch = 0, 0
    while current_iter < total_iter:
        sampler.set_epoch(epoch)
        for batch in loader:
            current_iter += 1
            yield current_iter, batch
            if current_iter == total_iter:
                return
        epoch += 1


def drop_after(run_dir, iteration: int) -> None:
    """Delete what the run in ``run_dir`` wrote after ``iteration`` (networks, states, pictures of the negatives):
    the folder of a run stopped after its checkpoint at ``iteration``."""
    for sub in ('models', 'training_states', 'visualization/mclir_negatives'):
        folder = os.path.join(str(run_dir), sub)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            label = re.match(r'(?:\w+_)?(\d+|latest)\.\w+$', name)
            if label and (label[1] == 'latest' or int(label[1]) > iteration):
                os.remove(os.path.join(folder, name))


def write_recipe_root(root, vgg16_file: str, vgg16_name: str) -> str:
    """``root`` with every recipe's data at its file's paths and ``torch_home/hub/checkpoints/<vgg16_name>`` linked
    to ``vgg16_file``; returns the checkpoints folder (for more weight files)."""
    write_recipe_data(str(root))
    checkpoints = os.path.join(str(root), 'torch_home', 'hub', 'checkpoints')
    os.makedirs(checkpoints)
    os.symlink(vgg16_file, os.path.join(checkpoints, vgg16_name))
    return checkpoints


# ----------------------------------------------------------------------------------------------------------------
# tools/train.py in this process: the same entry point (``mclir_plugin.commands.train.main``: BasicSR's
# ``train_pipeline`` with its argv parsing and the plugin's fixes) without a new interpreter importing torch,
# torchvision and BasicSR again (4-5 s each). Tests whose point is a process (a kill, a lock held by another process,
# a resume in fresh processes, gloo ranks) keep starting one.

class InProcessRun:
    """What a ``tools/train.py`` run left: BasicSR's log lines (``LEVEL: message``) and the error it raised."""

    def __init__(self, log: str, error: BaseException | None) -> None:
        self.log, self.error = log, error

    @property
    def out(self) -> str:
        """What the process would have printed: the log, then the error's traceback (chained causes included)."""
        if self.error is None:
            return self.log
        return self.log + '\n' + ''.join(traceback.format_exception(self.error))

    def check(self) -> str:
        """The log of a run that must have succeeded (its error re-raised, with the log's end, otherwise)."""
        if self.error is not None:
            raise AssertionError(f'the run failed; its log ends with:\n{self.log[-4000:]}') from self.error
        return self.log


@contextlib.contextmanager
def basicsr_log() -> Iterator[list[str]]:
    """BasicSR's logger messages inside the block, at INFO and above (the logger does not propagate, so pytest's
    caplog misses them, and a logger initialised without a log file would drop INFO)."""
    logger = logging.getLogger('basicsr')
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(f'{record.levelname}: {record.getMessage()}')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train_in_process(root, *args: str) -> InProcessRun:
    """``python tools/train.py <args>`` run from the folder ``root``, in this process.

    ``sys.argv`` and the working directory are restored afterwards, and the run's ``experiments/<name>.lock`` is
    released (a process releases it at exit), so that a later run, here or in another process, may take it.
    """
    from mclir_plugin.commands.train import main
    from mclir_plugin.utils import run_lock
    argv, cwd, error = sys.argv, os.getcwd(), None
    sys.argv = ['train.py', *args]
    os.chdir(root)
    try:
        with basicsr_log() as lines:
            try:
                main()
            except Exception as err:  # noqa: BLE001  (the caller asserts on it, as on a process's exit status)
                error = err
    finally:
        sys.argv = argv
        os.chdir(cwd)
        for lock in glob.glob(os.path.join(str(root), 'experiments', '*.lock')):
            run_lock.release(lock)
    return InProcessRun('\n'.join(lines), error)
