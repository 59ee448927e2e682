"""What every service's fake unit of work shares: a transaction over in-memory state (its
repository, the outbox, the inbox), rolled back when its block raises, and the check that a fake
repository answers to the real one's methods and keyword parameters."""
import copy
import inspect
from contextlib import asynccontextmanager
from typing import ClassVar
from uuid import UUID


class FakeTx:
    repository: ClassVar[type]

    def __init__(self, state):
        self.s = state
        self.repo = self.repository(state)

    async def publish(self, event) -> None:
        self.s.outbox.append(event)

    async def first_delivery(self, message_id: UUID) -> bool:
        if message_id in self.s.inbox:
            return False
        self.s.inbox.add(message_id)
        return True


class FakeUnitOfWork:
    """`STATE` names the attributes a transaction may change; `tx` is the service's FakeTx."""
    STATE: ClassVar[tuple[str, ...]]
    tx: ClassVar[type[FakeTx]]
    commits = 0

    @asynccontextmanager
    async def rollback_on_error(self):
        saved = copy.deepcopy({name: getattr(self, name) for name in self.STATE})
        try:
            yield
        except BaseException:
            for name, value in saved.items():
                setattr(self, name, value)
            raise

    @asynccontextmanager
    async def begin(self, **_):
        async with self.rollback_on_error():
            yield self.tx(self)
        self.commits += 1

    @asynccontextmanager
    async def connect(self):
        yield self.tx(self)

    def published(self, type_: type) -> list:
        return [e for e in self.outbox if isinstance(e, type_)]


def assert_same_methods(real: type, fake: type) -> None:
    """The fake has every public async method of the real repository, with the same parameters."""
    methods = {n: inspect.signature(f) for n, f in vars(real).items()
               if inspect.iscoroutinefunction(f) and not n.startswith("_")}
    missing = sorted(n for n in methods if not hasattr(fake, n))
    assert not missing, f"{fake.__name__} lacks {missing}"
    for name, sig in methods.items():
        want = [(p.name, p.kind) for p in sig.parameters.values() if p.name != "self"]
        have = [(p.name, p.kind) for p in inspect.signature(getattr(fake, name)).parameters.values()
                if p.name != "self"]
        assert have == want, name
