import numpy as np
import pytest

from deit_pipe.data import MixConfig, plan, step_slots, steps_per_epoch
from deit_pipe.data.plan.epoch import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from deit_pipe.errors import PlanError


@pytest.mark.parametrize("n,repeats", [(1437, 3), (1000, 1), (257, 3), (7, 2)])
def test_epoch_covers_v_slots_with_repeats(n, repeats):
    p = plan(0, 0, n, repeats, MixConfig(), 32)
    assert len(p) == n and p.num_pairs == (n + 1) // 2
    counts = np.bincount(p.sample, minlength=n)
    assert counts.max() == repeats
    assert (counts > 0).sum() == -(-n // repeats)  # ⌈N/r⌉ distinct images
    for s in np.flatnonzero(counts):  # each repeat of an image has its own id and seed
        slots = np.flatnonzero(p.sample == s)
        assert sorted(p.repeat[slots]) == list(range(len(slots)))
    assert len(np.unique(p.view_seed)) == n


def test_repeats_stay_close_and_pairs_mix_distinct_images():
    p = plan(3, 1, 3000, 3, MixConfig(), 32)
    for s in np.unique(p.sample)[:200]:
        slots = np.flatnonzero(p.sample == s)
        assert slots.max() - slots.min() < 3 * 64
    a, b = p.sample[0::2], p.sample[1::2]
    assert (a != b).mean() > 0.99


def test_plan_is_pure_and_epochs_differ():
    a, b = plan(5, 2, 500), plan(5, 2, 500)
    for field in ("sample", "repeat", "view_seed", "mix_op", "lam", "box"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = plan(5, 3, 500)
    assert (a.sample != c.sample).any() and (a.view_seed != c.view_seed).all()
    assert (plan(6, 2, 500).view_seed != a.view_seed).all()


def test_mix_parameters_follow_timm_semantics():
    size = 32
    p = plan(0, 0, 20000, 1, MixConfig(), size)
    ops = p.mix_op
    assert set(np.unique(ops)) == {MIX_MIXUP, MIX_CUTMIX}  # prob 1: every pair mixes
    assert abs((ops == MIX_CUTMIX).mean() - 0.5) < 0.03
    cut = ops == MIX_CUTMIX
    y0, y1, x0, x1 = p.box[cut].T
    assert ((y0 >= 0) & (y0 <= y1) & (y1 <= size) & (x0 >= 0) & (x0 <= x1) & (x1 <= size)).all()
    np.testing.assert_allclose(p.lam[cut], 1 - (y1 - y0) * (x1 - x0) / size**2)
    assert ((p.lam >= 0) & (p.lam <= 1)).all()
    assert (p.box[~cut] == 0).all()
    # Beta(0.8, 0.8) has mean 0.5 and variance 1/(4·2.6).
    assert abs(p.lam[ops == MIX_MIXUP].var() - 1 / 10.4) < 0.01


def test_mixing_off_and_odd_last_slot():
    off = plan(0, 0, 101, 1, MixConfig(prob=0.0), 32)
    assert (off.mix_op == MIX_NONE).all() and (off.lam == 1).all()
    odd = plan(0, 0, 101, 1, MixConfig(), 32)
    assert odd.mix_op[-1] == MIX_NONE and list(odd.pair_slots(50)) == [100]
    assert odd.partner(np.array([0, 1, 100])).tolist() == [1, 0, 100]


def test_cutmix_only_and_mixup_only():
    only_cut = plan(0, 0, 200, 1, MixConfig(mixup_alpha=0.0), 32)
    assert (only_cut.mix_op == MIX_CUTMIX).all()
    only_mix = plan(0, 0, 200, 1, MixConfig(cutmix_alpha=0.0), 32)
    assert (only_mix.mix_op == MIX_MIXUP).all()


def test_consumption_does_not_depend_on_world_size():
    batch, n = 64, 1000
    for step in range(steps_per_epoch(n, batch)):
        single = set(step_slots(step, batch, 1, 0))
        ranks = [step_slots(step, batch, 2, r) for r in range(2)]
        assert set(ranks[0]) | set(ranks[1]) == single
        assert not set(ranks[0]) & set(ranks[1])
        assert all(r.start % 2 == 0 and len(r) % 2 == 0 for r in ranks)
    assert steps_per_epoch(n, batch) == 15


@pytest.mark.parametrize("batch,world", [(63, 1), (64, 3), (6, 2)])
def test_bad_consumption_layouts_are_refused(batch, world):
    with pytest.raises(PlanError):
        step_slots(0, batch, world, 0)
