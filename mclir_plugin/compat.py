"""Everything that adapts PyPI ``basicsr`` 1.4.2 to current torch/torchvision.

BasicSR 1.4.2 is the last release and is never patched on disk here. Instead this module applies small,
idempotent runtime fixes, each tied to a breakage listed in ``docs/basicsr_notes.md`` §5:

* **A** ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17, and every
  ``import basicsr`` fails on it. :func:`install_import_shim` provides the one function BasicSR uses.
  It must run before the first ``basicsr`` import, so ``mclir_plugin/__init__.py`` calls it first.
* **F** ``torch.distributed.launch`` passes ``--local-rank``; BasicSR's parser only knows ``--local_rank``.
  :func:`normalise_local_rank_argv` rewrites ``sys.argv``.
* **G/M** resuming calls ``torch.cuda.current_device()`` (fails without CUDA) and ``--auto_resume`` looks in a
  folder relative to the working directory. :func:`load_resume_state` replaces BasicSR's version.
* **H** ``--launcher pytorch`` hard-codes nccl and picks the GPU by global rank (``ZeroDivisionError`` on CPU).
  :func:`init_dist` uses gloo without CUDA and ``LOCAL_RANK`` with it; DDP on CPU needs ``device_ids=None``.
* ``get_optimizer`` knows only Adam (master added others): :func:`_get_optimizer` takes any ``torch.optim`` class,
  so the AdamW recipes of FFA-Net/MCLIR and DehazeFormer run.
* ``setup_schedulers`` knows two scheduler types by an if/else: :func:`mclir_plugin.models.lr_schedulers.setup_schedulers`
  builds any registered one (the official ``TrueCosineAnnealingLR``, DehazeFormer's ``EpochCosineAnnealingLR``).
* mmengine 0.10.7 loads checkpoints with a bare ``torch.load``, weights-only since torch 2.6, which rejects its own
  objects: :func:`trusted_mmengine_checkpoints` allow-lists exactly those (wrap ``runner.train()`` in it).
* ``--force_yml a:b=1e6`` keeps ``1e6`` as text (BasicSR reads numbers only without an exponent), ``=no`` as
  text that later reads as true, and ``eval``s lists: values are read by
  :func:`mclir_plugin.utils.options.parse_override_value` instead, the one rule of every tool's overrides.
* Validation hands metrics uint8 images only and keeps no best model: ``BaseModel.validation`` is wrapped by
  :func:`mclir_plugin.models.validation.install` (float output for the float-protocol metrics, ``val.save_best``).
* Two runs with one ``name`` share a folder (BasicSR renames it under the running one); a stalled rank hangs the
  others for 30 minutes without a word: :func:`mclir_plugin.utils.run_lock.owning_the_folder` takes the run's lock and
  applies ``dist_params.timeout`` first, and the loop's iteration is noted for :mod:`mclir_plugin.utils.distributed`.
* Resuming restores the training state's learning rate and scheduler over the option file's, with no way to lower
  the rate after a divergence: ``BaseModel.resume_training`` applies ``train.resume_lr``
  (:mod:`mclir_plugin.utils.resume_lr`).
* Resume restarts the interrupted epoch and forgets the random states; the training loader is wrapped so that
  :mod:`mclir_plugin.utils.exact_resume` can replay it exactly, and ``build_model`` hands the model that loader's
  progress (one object per run, no global). A missing dataset path is named before BasicSR fails on it.
* A 0-byte, corrupt or missing image (file or lmdb value) ends in OpenCV's ``!buf.empty()`` naming nothing:
  ``FileClient.get``/``imfrombytes`` are wrapped to name the file or lmdb key and the fix
  (:func:`mclir_plugin.data.image_io.install_named_image_reads`).
* **R** BasicSR's own option files say ``model_type: RealESRGANModel``/``RealESRNetModel``; 1.4.2 registers
  ``*_basicsr`` and ``MODEL_REGISTRY.get`` falls back to that suffix. :func:`resolve_model_type` resolves
  ``mclir.base_model`` the same way (a plain name, such as the ``realesrgan`` package's, wins).
* **S** Real-ESRGAN models call ``.cuda()`` in ``__init__`` (DiffJPEG, USMSharp), ``feed_data`` and
  ``_dequeue_and_enqueue`` (the training-pair queue); the video models' validation makes its metric tensors with
  ``device='cuda'``: CPU runs die ("Found no NVIDIA driver"). Those methods (:data:`CUDA_BOUND_METHODS`, also in
  classes defined later, e.g. by the ``realesrgan`` package) run inside :func:`cuda_calls_to`, which sends explicit
  CUDA placements to the model's device when that is not a usable GPU; baseline and ``MCLIRModel`` runs alike.
  On CPU, ``VideoRecurrentModel``'s validation un-squeezes the clip in place after ``feed_data``, whose ``.to()``
  returned that very tensor (4-D ``lq`` in ``test()``): its ``feed_data`` gets copies there (:func:`_feeding_copies`).
* Packages that register models on import (the ``realesrgan`` package) are not imported by BasicSR's pipelines:
  their ``parse_options`` imports the option file's ``mclir.import_modules`` (:mod:`mclir_plugin.utils.option_imports`).
* **T** ``DiffJPEG`` returns a permuted (channels-last strided) tensor that Real-ESRGAN's next ``filter2D``
  cannot ``.view()``: its ``forward`` returns it contiguous (same values).

:func:`patch_basicsr` installs the run-time fixes; it is called by ``import mclir_plugin``.
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import os
import re
import sys
import threading
import types
from os import path as osp
from typing import Any, Iterator

_PATCHED = False




def install_import_shim() -> None:
    """Provide ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) for BasicSR.

    BasicSR 1.4.2 imports only ``rgb_to_grayscale`` from it (``basicsr/data/degradations.py``).
    """
    if 'torchvision.transforms.functional_tensor' in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (torchvision < 0.17)
        return
    except ImportError:
        pass
    import torchvision.transforms.functional as tv_functional
    shim = types.ModuleType('torchvision.transforms.functional_tensor')
    shim.__doc__ = 'Stand-in created by mclir_plugin.compat for BasicSR 1.4.2 (removed in torchvision 0.17).'
    shim.rgb_to_grayscale = tv_functional.rgb_to_grayscale
    sys.modules['torchvision.transforms.functional_tensor'] = shim


def normalise_local_rank_argv(argv: list[str] | None = None) -> list[str]:
    """Rewrite ``--local-rank`` (torch >= 2.0 launchers) to ``--local_rank`` (BasicSR's parser), in place."""
    argv = sys.argv if argv is None else argv
    argv[:] = [re.sub(r'^--local-rank(?==|$)', '--local_rank', a) for a in argv]
    return argv


def init_dist(launcher: str, backend: str | None = None, **kwargs: Any) -> None:
    """Start torch.distributed for BasicSR's ``--launcher pytorch|slurm``, on GPUs or on CPUs.

    Unlike BasicSR 1.4.2 it picks the GPU by ``LOCAL_RANK`` (not the global rank, which breaks on several
    nodes), and uses gloo when CUDA is absent, so that ``torchrun`` on a CPU machine works.

    Args:
        launcher: ``'pytorch'`` (torchrun, environment variables) or ``'slurm'`` (srun).
        backend: ``'nccl'``/``'gloo'``. Defaults to nccl with CUDA, gloo without (nccl needs CUDA, so it
            becomes gloo there too).
        **kwargs: ``port`` for slurm, as in BasicSR's ``dist_params``.
    """
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    cuda = torch.cuda.is_available()
    backend = backend or ('nccl' if cuda else 'gloo')
    if backend == 'nccl' and not cuda:  # a GPU option file's dist_params on a CPU machine: nccl cannot run
        backend = 'gloo'
    if launcher == 'slurm':
        _slurm_env(kwargs.get('port'))
    elif launcher != 'pytorch':
        raise ValueError(f"Invalid launcher {launcher!r}: use 'none', 'pytorch' (torchrun) or 'slurm'.")
    if cuda:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])) % torch.cuda.device_count())
    dist.init_process_group(backend=backend)


def _slurm_env(port: int | None) -> None:
    """Translate srun's variables into the ones ``init_process_group(init_method='env://')`` reads."""
    import subprocess
    proc_id = int(os.environ['SLURM_PROCID'])
    if port is not None:  # dist_params.port wins, as in BasicSR
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    nodes = os.environ['SLURM_NODELIST']
    os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {nodes} | head -n1')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = str(proc_id)
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))


def load_resume_state(opt: dict) -> dict | None:
    """BasicSR's ``load_resume_state`` made to work without CUDA and from any working directory.

    ``--auto_resume`` takes the newest complete ``<iter>.state`` in ``opt['path']['training_states']`` (the run's
    own folder, derived from the root path; :func:`mclir_plugin.utils.checkpoint.newest_training_state`) instead of
    a path relative to the working directory.
    """
    import torch
    from basicsr.utils import check_resume
    from mclir_plugin.utils.checkpoint import newest_training_state

    path = None
    if opt['auto_resume']:
        path = newest_training_state(opt['path']['training_states'])
        if path is not None:
            opt['path']['resume_state'] = path
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
    if path is None:
        return None
    if not osp.isfile(path):
        raise FileNotFoundError(f'path.resume_state {path!r} does not exist: point it at a '
                                'training_states/<iter>.state file of an earlier run, or use --auto_resume.')
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        location = torch.device('cuda', torch.cuda.current_device())
    else:
        location = torch.device('cpu')
    try:
        state = torch.load(path, map_location=location, weights_only=False)
    except Exception as err:  # a truncated or foreign file: name it, rather than a bare unpickling error
        raise RuntimeError(f'Cannot read the training state {path!r} ({type(err).__name__}: {err}). '
                           'Delete it to resume from the previous checkpoint.') from err
    check_resume(opt, state['iter'])
    return state


def _model_to_device(self, net):
    """``BaseModel.model_to_device`` that also wraps CPU networks in DDP (``device_ids=None``)."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


_PATH_KEYS = ('dataroot_gt', 'dataroot_lq', 'meta_info_file')


def check_dataset_paths(dataset_opt: dict) -> None:
    """Raise a clear error naming the option when a dataset folder, lmdb or meta file does not exist."""
    for key in _PATH_KEYS:
        value = dataset_opt.get(key)
        if isinstance(value, str) and not osp.exists(value):
            raise FileNotFoundError(
                f"datasets.{dataset_opt.get('phase', '?')} ({dataset_opt.get('name')}, type "
                f"{dataset_opt.get('type')}): {key} {value!r} does not exist (working directory {os.getcwd()!r}). "
                f"Put the data there (README, 'Datasets'), or change {key} in the option file "
                f"(or with --force_yml datasets:<phase>:{key}=<path>).")


def _checked_build_dataset(build_dataset):
    def build(dataset_opt):
        check_dataset_paths(dataset_opt)
        return build_dataset(dataset_opt)
    build.__wrapped__ = build_dataset
    return build


def _get_optimizer(self, optim_type: str, params, lr: float, **kwargs):
    """``BaseModel.get_optimizer`` for any ``torch.optim`` class (BasicSR 1.4.2 knows only Adam)."""
    import torch
    optim_cls = getattr(torch.optim, optim_type, None)
    if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
        raise NotImplementedError(f'train.optim_g.type {optim_type!r} is not a torch.optim optimizer '
                                  '(Adam, AdamW, SGD, ...).')
    return optim_cls(params, lr, **kwargs)


def _load_network_naming_file(load_network):
    """``BaseModel.load_network`` whose errors name the file and what to check."""
    def load(self, net, load_path, strict=True, param_key='params'):
        from mclir_plugin.utils.checkpoint import is_damaged_file_error
        try:
            return load_network(self, net, load_path, strict, param_key)
        except Exception as err:
            if is_damaged_file_error(err):
                size = osp.getsize(load_path) if osp.exists(load_path) else 0
                raise RuntimeError(
                    f'Cannot read the network file {load_path!r} ({size} bytes): it is truncated or damaged '
                    f'({type(err).__name__}: {str(err).splitlines()[0][:200] or "empty"}). For '
                    'path.pretrain_network_g, copy the file again; for a checkpoint of this run (models/net_g_<iter>'
                    '.pth), delete it and training_states/<iter>.state to resume from the previous one.') from err
            raise RuntimeError(
                f'Cannot load {param_key!r} from {load_path!r} into {type(self.get_bare_model(net)).__name__} '
                f'({type(err).__name__}: {str(err)[:500]}). Check that network_g matches the checkpoint, or, for a '
                'damaged file, delete it and its training state to resume from the previous checkpoint.') from err
    load.__wrapped__ = load_network
    return load


def _resumable_train_loader(create_train_val_dataloader):
    """Wrap BasicSR's train loader in :class:`mclir_plugin.utils.exact_resume.ResumableLoader` (exact resume), with
    a new :class:`~mclir_plugin.utils.exact_resume.TrainProgress` for this run, left in ``opt`` for its model."""
    def create(opt, logger):
        from mclir_plugin.utils.exact_resume import resumable_train_loader
        train_loader, *rest = create_train_val_dataloader(opt, logger)
        return (resumable_train_loader(opt, train_loader), *rest)
    create.__wrapped__ = create_train_val_dataloader
    return create


def _model_with_run_progress(build_model):
    """``build_model`` that hands the run's training progress (made with its train loader) to a model that keeps
    one (``train_progress``, ``MCLIRModel``): its training states then record, and its resume replays, this run's
    loader."""
    def build(opt):
        from mclir_plugin.utils.exact_resume import take_progress
        progress = take_progress(opt)  # before build_model deep-copies opt: the model needs this very object
        model = build_model(opt)
        if progress is not None and hasattr(model, 'train_progress'):
            model.train_progress = progress
        return model
    build.__wrapped__ = build_model
    return build


def patch_basicsr() -> None:
    """Install the run-time fixes (idempotent). Requires :func:`install_import_shim` to have run."""
    global _PATCHED
    if _PATCHED:
        return
    import basicsr.train as bs_train
    import basicsr.utils.options as bs_options
    from basicsr.models.base_model import BaseModel
    from mclir_plugin.utils.options import parse_override_value

    bs_options.init_dist = init_dist
    bs_options._postprocess_yml_value = parse_override_value
    from mclir_plugin.utils.distributed import noting_iteration
    from mclir_plugin.utils.run_lock import logging_the_notes, owning_the_folder
    bs_train.load_resume_state = owning_the_folder(load_resume_state)  # the run's lock before any folder is touched
    import basicsr.test as bs_test
    from mclir_plugin.utils.option_imports import importing_option_modules
    for pipeline in (bs_train, bs_test):  # mclir.import_modules (e.g. realesrgan) before datasets and models
        pipeline.parse_options = importing_option_modules(pipeline.parse_options)
    bs_train.build_dataset = _checked_build_dataset(bs_train.build_dataset)
    bs_train.create_train_val_dataloader = logging_the_notes(
        _resumable_train_loader(bs_train.create_train_val_dataloader))
    bs_train.build_model = _model_with_run_progress(bs_train.build_model)  # the loader's progress, to the model
    BaseModel.update_learning_rate = noting_iteration(BaseModel.update_learning_rate)
    from mclir_plugin.utils.resume_lr import with_resume_lr
    BaseModel.resume_training = with_resume_lr(BaseModel.resume_training)  # train.resume_lr
    BaseModel.model_to_device = _model_to_device
    BaseModel.get_optimizer = _get_optimizer
    from mclir_plugin.models.lr_schedulers import setup_schedulers
    BaseModel.setup_schedulers = setup_schedulers
    BaseModel.load_network = _load_network_naming_file(BaseModel.load_network)
    from mclir_plugin.models.validation import install as install_validation
    install_validation()  # float-protocol metrics and val.save_best (also registers mclir_plugin.metrics.float_metrics)
    from mclir_plugin.data.image_io import install_named_image_reads
    install_named_image_reads()  # after basicsr.train imported basicsr.data: its modules bind imfrombytes by name
    _install_model_device_fixes()  # Real-ESRGAN and video models on CPU
    _PATCHED = True


def mmengine_checkpoint_globals() -> list:
    """The non-tensor objects an mmengine 0.10.7 Runner checkpoint pickles (its message hub's ``HistoryBuffer``
    with numpy arrays, scalars and dtypes, and the ``getattr`` that rebuilds its bound statistics methods).

    Allow-listing them lets ``torch.load(weights_only=True)``, torch's default since 2.6, read those checkpoints.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = (getattr(np, '_core', None) or np.core).multiarray
    dtypes = [c for c in vars(getattr(np, 'dtypes', np)).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    return [HistoryBuffer, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes, builtins.getattr]


@contextlib.contextmanager
def trusted_mmengine_checkpoints() -> Iterator[None]:
    """Let mmengine 0.10.7 load or resume its checkpoints under torch >= 2.6 (wrap ``runner.train()``).

    mmengine's ``load_from_local`` calls ``torch.load`` without ``weights_only``, so torch >= 2.6 loads weights-only
    and rejects the message hub's objects (open-mmlab/mmengine#1655). This context keeps the weights-only
    unpickler and allow-lists exactly :func:`mmengine_checkpoint_globals`; use it for checkpoints you trust.
    A no-op on torch < 2.5 (no ``safe_globals``; loads there are not weights-only by default).
    """
    import torch
    if not hasattr(torch.serialization, 'safe_globals'):
        yield
        return
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        yield


def resolve_model_type(name: str) -> str | None:
    """The ``MODEL_REGISTRY`` key that ``MODEL_REGISTRY.get(name)`` would use, or None when there is none.

    As BasicSR's registry does, a plain name wins and ``<name>_basicsr`` is the fallback: BasicSR 1.4.2 registers
    its Real-ESRGAN models as ``RealESRNetModel_basicsr``/``RealESRGANModel_basicsr`` while its own option files
    say ``RealESRNetModel``/``RealESRGANModel``; once the ``realesrgan`` package is imported, its plain names win.
    """
    from basicsr.utils.registry import MODEL_REGISTRY
    for key in (name, f'{name}_basicsr'):
        if key in MODEL_REGISTRY:
            return key
    return None


def _is_cuda(device: Any) -> bool:
    import torch
    return isinstance(device, (str, torch.device)) and str(device).startswith('cuda')


def _explicit_cuda_mode(device: Any):
    """A ``TorchFunctionMode`` sending every explicitly requested CUDA tensor or module to ``device`` instead:
    ``.cuda()``, ``.to('cuda')``/``.to(torch.device('cuda', i))`` and ``device='cuda'`` in any call (factories)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class ExplicitCudaTo(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.Tensor.cuda:  # Module.cuda() ends here too, once per parameter and buffer
                keep = {k: kwargs[k] for k in ('non_blocking', 'memory_format') if k in kwargs}
                return args[0].to(device, **keep)
            if _is_cuda(kwargs.get('device')):
                kwargs['device'] = device
            if func is torch.Tensor.to:
                args = tuple(device if _is_cuda(a) else a for a in args)
            return func(*args, **kwargs)

    return ExplicitCudaTo()


_REDIRECTING = threading.local()


@contextlib.contextmanager
def cuda_calls_to(device: Any) -> Iterator[None]:
    """Inside the block, explicit CUDA placements go to ``device`` when that is not a usable GPU.

    ``.cuda()`` (tensors and modules), ``.to('cuda')`` and ``device='cuda'`` in factory calls are redirected by one
    ``torch.overrides.TorchFunctionMode``; other devices, and everything when ``device`` is a GPU that exists, are
    left alone. Re-entering (a wrapped method calling another) adds no second mode.

    Args:
        device: The model's device (``torch.device`` or a string).
    """
    import torch
    device = torch.device(device)
    if (device.type == 'cuda' and torch.cuda.is_available()) or getattr(_REDIRECTING, 'active', False):
        yield
        return
    target = torch.device('cpu') if device.type == 'cuda' else device  # a GPU option file on a machine without one
    _REDIRECTING.active = True
    try:
        with _explicit_cuda_mode(target):
            yield
    finally:
        _REDIRECTING.active = False


# BasicSR model classes (by class name: BasicSR's *_basicsr copies and the realesrgan package's share it) and their
# methods that place tensors on 'cuda' unconditionally
CUDA_BOUND_METHODS = {
    'RealESRNetModel': ('__init__', 'feed_data', '_dequeue_and_enqueue'),  # DiffJPEG/USMSharp .cuda(); pair queue
    'RealESRGANModel': ('__init__', 'feed_data', '_dequeue_and_enqueue'),
    'VideoBaseModel': ('dist_validation', 'nondist_validation'),  # metric tensors made with device='cuda'
    'VideoRecurrentModel': ('dist_validation', 'nondist_validation'),
}


def _model_device(model: Any, args: tuple, kwargs: dict) -> Any:
    """The device of ``model``; inside ``__init__``, before BasicSR sets it, the one its option dict asks for."""
    import torch
    if isinstance(getattr(model, 'device', None), torch.device):
        return model.device
    opt = args[0] if args else kwargs.get('opt', {})
    return torch.device('cuda' if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available() else 'cpu')


def _on_model_device(method):
    """Wrap a model method so that its explicit CUDA placements go to the model's device (see :func:`cuda_calls_to`)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with cuda_calls_to(_model_device(self, args, kwargs)):
            return method(self, *args, **kwargs)
    run.__mclir_device_wrapped__ = True
    return run


def _feeding_copies(dist_validation):
    """Run a video ``dist_validation`` whose ``feed_data`` receives copies of the clip's tensors.

    ``VideoRecurrentModel.dist_validation`` un-squeezes the clip in place after ``feed_data``; on CPU
    ``.to(self.device)`` returns that very tensor, so the model's ``lq`` turns 4-D before ``test()`` (on a GPU the
    move copies).
    """
    @functools.wraps(dist_validation)
    def run(self, *args, **kwargs):
        import torch
        if self.device.type == 'cuda':
            return dist_validation(self, *args, **kwargs)
        feed_data = self.feed_data
        self.feed_data = lambda data: feed_data({k: v.clone() if isinstance(v, torch.Tensor) else v
                                                 for k, v in data.items()})
        try:
            return dist_validation(self, *args, **kwargs)
        finally:
            del self.feed_data  # the class's method again
    run.__mclir_feeding_copies__ = True
    return run


# video models whose dist_validation changes the fed tensors in place (see _feeding_copies)
IN_PLACE_VALIDATION = ('VideoRecurrentModel',)


def _place_cuda_calls(cls: type) -> None:
    """Wrap ``cls``'s own CUDA-bound methods (:data:`CUDA_BOUND_METHODS`, :data:`IN_PLACE_VALIDATION`), once."""
    for name in CUDA_BOUND_METHODS.get(cls.__name__, ()):
        method = cls.__dict__.get(name)
        if callable(method) and not getattr(method, '__mclir_device_wrapped__', False):
            setattr(cls, name, _on_model_device(method))
    method = cls.__dict__.get('dist_validation')
    if cls.__name__ in IN_PLACE_VALIDATION and callable(method) and not hasattr(method, '__mclir_feeding_copies__'):
        cls.dist_validation = _feeding_copies(method)


def _install_model_device_fixes() -> None:
    """Wrap the CUDA-bound methods of every BasicSR model class, defined now (a subclass walk) or later (the
    ``realesrgan`` package's copies, through ``BaseModel.__init_subclass__``), and make DiffJPEG's output contiguous."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.diffjpeg import DiffJPEG

    pending = [BaseModel]
    while pending:
        cls = pending.pop()
        _place_cuda_calls(cls)
        pending.extend(cls.__subclasses__())
    previous = BaseModel.__dict__.get('__init_subclass__')

    def init_subclass(cls, **kwargs):
        super(BaseModel, cls).__init_subclass__(**kwargs)
        _place_cuda_calls(cls)
    if previous is None:
        BaseModel.__init_subclass__ = classmethod(init_subclass)

    forward = DiffJPEG.forward
    if not getattr(forward, '__mclir_contiguous__', False):
        @functools.wraps(forward)
        def contiguous_forward(self, x, quality):
            # DiffJPEG ends in view(...).permute(0, 3, 1, 2) (channels-last strides); Real-ESRGAN's next step
            # (filter2D) calls .view() on it, which fails: hand on a contiguous tensor (same values)
            return forward(self, x, quality).contiguous()
        contiguous_forward.__mclir_contiguous__ = True
        DiffJPEG.forward = contiguous_forward
