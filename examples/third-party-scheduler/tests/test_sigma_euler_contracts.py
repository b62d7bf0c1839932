from kernel_contracts import SchedulerContract
class TestSigmaEuler(SchedulerContract):
    component = "SigmaEulerScheduler"


def test_begin_index_is_recorded():
    from kernel_contracts.testing import assert_begin_index_stored
    from sigma_euler import SigmaEulerScheduler

    assert_begin_index_stored(SigmaEulerScheduler(), 10)
