from kernel_contracts import SchedulerContract
class TestSigmaEuler(SchedulerContract):
    component = "SigmaEulerScheduler"
