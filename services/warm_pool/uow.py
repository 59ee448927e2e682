"""The Postgres unit of work (ports.UnitOfWork): the repository, the outbox and the inbox on one
connection of the service's pool."""
from services.warm_pool.repository import Repository
from shared import uow

CONSUMER = "warm_pool"


class PostgresTx(uow.PostgresTx):
    consumer = CONSUMER
    repository = Repository


class PostgresUnitOfWork(uow.PostgresUnitOfWork):
    tx = PostgresTx
