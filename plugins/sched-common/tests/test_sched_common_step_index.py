"""The shared sync-free step index of :mod:`kernel_sched_common.step_index`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_sched_common import MirroredTimestepsMixin, StepIndexMixin, host_int, position_in


class _Tracked(MirroredTimestepsMixin):
    pass


def _tracked(values, device="cpu", missing="error"):
    s = _Tracked()
    s._missing_timestep = missing
    s._store_timesteps(torch.tensor(values), device)
    return s


def test_position_in_finds_views_only():
    table = torch.tensor([9, 7, 5, 3])
    assert [position_in(t, table) for t in table] == [0, 1, 2, 3]
    assert position_in(table[2].clone(), table) is None
    assert position_in(table.float()[1], table) is None  # other dtype, other storage
    assert position_in(table[::2][1], table) == 2


def test_meta_device_views_are_located_without_reading():
    s = _tracked([9, 7, 7, 5], device="meta")
    s._init_step_index(s.timesteps[0])
    assert s.step_index == 0
    # a repeated timestep takes its second match, as Diffusers does
    assert s.index_for_timestep(s.timesteps[1]) == 2


def test_missing_timestep_policy():
    assert _tracked([9, 7, 5], missing="last").index_for_timestep(4) == 2
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        _tracked([9, 7, 5]).index_for_timestep(4)


def test_set_begin_index_validates():
    s = StepIndexMixin()
    s.set_begin_index(np.int64(3))
    assert s.begin_index == 3 and isinstance(s.begin_index, int)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="begin_index"):
            s.set_begin_index(bad)


def test_host_int():
    assert host_int(torch.tensor(12.9)) == 12 and host_int(np.int64(4)) == 4 and host_int(3) == 3
    with pytest.raises(ValueError, match="scalar"):
        host_int(torch.tensor([1, 2]))


def test_begin_index_mixin_checks_and_records():
    from kernel_sched_common import BeginIndexMixin

    class Sched(BeginIndexMixin):
        pass

    s = Sched()
    assert s.begin_index is None
    s.set_begin_index(np.int64(3))
    assert s.begin_index == 3 and type(s.begin_index) is int
    for bad in (-1, 2.0, True, "1"):
        with pytest.raises(ValueError, match="begin_index must be a non-negative int"):
            s.set_begin_index(bad)
    assert s.begin_index == 3
    assert issubclass(StepIndexMixin, BeginIndexMixin)  # one definition serves both
