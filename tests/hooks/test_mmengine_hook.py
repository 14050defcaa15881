import mclir_plugin  # noqa: F401

# HistoryNegativeHook under a real mmengine Runner (examples/mmengine_spn.py): the refresh schedule counted from
# runner.iter, the checkpoint entry, an exact resume (the negatives arrive before they are built), and load_from.

import pickle

import pytest
import torch
from mmengine.registry import HOOKS

from mclir_plugin import HistoryNegativeHook
from conftest import load_example
from mclir_plugin.compat import trusted_mmengine_checkpoints



@pytest.fixture(scope='module')
def example():
    return load_example('mmengine_spn')


def states(hook: HistoryNegativeHook) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in neg.state_dict().items()} for neg in hook.negatives]


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def run(example, work_dir, name, **kwargs):
    runner = example.build_runner(str(work_dir), neg_iter=(1, 3), checkpoint_interval=2, experiment_name=name,
                                  log_level='WARNING', **kwargs)
    with trusted_mmengine_checkpoints():
        runner.train()
    return runner, runner.model.negative_hook


def test_hook_config_builds_with_module_key():
    hook = HOOKS.build({'type': 'HistoryNegativeHook', 'neg_iter': [2], 'module_key': 'net'})
    assert hook.module_key == 'net' and hook.checkpoint_key == 'mclir'
    with pytest.raises(ValueError, match='module_key must be an attribute name'):
        HistoryNegativeHook(module_key='')


def test_runner_trains_saves_and_resumes_the_negatives_exactly(example, tmp_path, empty_torch_home):
    straight, hook = run(example, tmp_path / 'a', 'straight', iters=4)
    # after_train_iter counts 1-based from runner.iter: neg_iter (1, 3) over 4 iterations
    assert hook.refresh_count == [4, 1] and hook.last_refresh_iter == [4, 3]
    assert hook.seed == 0  # the run's seed (randomness.seed)
    net = straight.model.net
    assert all(not any(p is q for q in net.parameters()) for p in hook.negatives[0].parameters())
    assert not any(torch.equal(p, q) for p, q in zip(hook.negatives[0].parameters(), net.parameters()))

    ckpt2 = tmp_path / 'a' / 'iter_2.pth'
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(ckpt2)  # mmengine 0.10.7 checkpoints need the allow-list under torch >= 2.6 ...
    with trusted_mmengine_checkpoints():
        saved = torch.load(ckpt2)  # ... and load weights-only inside it
    assert saved['mclir']['refresh_count'] == [2, 0] and saved['mclir']['last_refresh_iter'] == [2, 0]
    assert set(saved['mclir']) == {'negatives', 'intervals', 'decays', 'refresh_count', 'last_refresh_iter',
                                   'adaptive_count', 'draw_rng'}  # draw_rng: the generator of neg_per_step

    # resume from iteration 2 and train to 4: the negatives are read before they exist, set after before_train
    resumed, hook_b = run(example, tmp_path / 'b', 'resumed', iters=4, resume=True, load_from=str(ckpt2))
    assert hook_b._pending_state is None
    assert hook_b.refresh_count == [4, 1] and hook_b.last_refresh_iter == [4, 3]
    assert_same(states(hook_b), states(hook))
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.net.parameters(), net.parameters()))

    # load_from without resume (fine-tuning): nothing is restored, the negatives start from the loaded network
    _, hook_c = run(example, tmp_path / 'c', 'finetune', iters=1, load_from=str(tmp_path / 'a' / 'iter_4.pth'))
    assert hook_c.refresh_count == [1, 0] and hook_c.last_refresh_iter == [1, 0]

    hook.module_key = 'network'
    with pytest.raises(AttributeError, match="module_key 'network'.*no submodule 'network'"):
        hook.source_module(straight)


def test_resume_into_an_already_built_hook(example, tmp_path, empty_torch_home):
    """A hook built before runner.train() takes the checkpoint's negatives at once (after_load_checkpoint)."""
    first, hook = run(example, tmp_path / 'a', 'first', iters=2)
    runner = example.build_runner(str(tmp_path / 'b'), iters=2, neg_iter=(1, 3), checkpoint_interval=2,
                                  resume=True, load_from=str(tmp_path / 'a' / 'iter_2.pth'),
                                  experiment_name='prebuilt', log_level='WARNING')
    hook_b = runner.model.negative_hook
    hook_b.build(runner.model.net)  # fresh negatives, unlike the saved ones
    fresh = states(hook_b)
    with trusted_mmengine_checkpoints():
        runner.train()  # resumes at iteration 2 of 2: restores, trains nothing
    assert hook_b.refresh_count == [2, 0]
    assert_same(states(hook_b), states(hook))
    assert not torch.equal(fresh[0]['body.0.weight'], states(hook)[0]['body.0.weight'])
