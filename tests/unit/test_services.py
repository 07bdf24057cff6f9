"""The Events a FileSystem sends reach the right background services (services.py)."""

from tierfs.services import Services


class Recorder:
    def __init__(self):
        self.woken = 0
        self.deleted_n = 0

    async def run(self):
        pass

    def wake(self):
        self.woken += 1

    def deleted(self):
        self.deleted_n += 1

    async def stop(self):
        pass


def test_events_wake_the_services_they_concern():
    services = Services()
    gc, jobs, policy = Recorder(), Recorder(), Recorder()
    services.gc = services.add(gc)
    services.jobs = services.add(jobs)
    services.add(policy)

    services.garbage()           # a deletion: only the collector, in a batch (not an urgent wake)
    assert (gc.deleted_n, gc.woken, jobs.woken, policy.woken) == (1, 0, 0, 0)
    services.queued()            # a queued job: only the runner
    assert (gc.woken, jobs.woken, policy.woken) == (0, 1, 0)
    services.changed()           # a move finished: everyone, the collector at once
    assert (gc.woken, jobs.woken, policy.woken) == (1, 2, 1)


def test_stop_runs_in_registration_order():
    import trio
    order = []

    class Named(Recorder):
        def __init__(self, name):
            super().__init__()
            self.name = name

        async def stop(self):
            order.append(self.name)

    services = Services()
    for name in ("staging", "atimes", "policy"):
        services.add(Named(name))
    trio.run(services.stop_all)
    assert order == ["staging", "atimes", "policy"]

