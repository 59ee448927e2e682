"""The Postgres unit of work (handlers' `uow`): the sessions and dashboard repositories, the
outbox and the inbox on one connection of the service's pool."""
import asyncpg

from services.sessions.dashboard.repository import DashboardRepository
from services.sessions.repository import Repository
from shared import uow

CONSUMER = "sessions"


class PostgresTx(uow.PostgresTx):
    consumer = CONSUMER
    repository = Repository

    def __init__(self, conn: asyncpg.Connection):
        super().__init__(conn)
        self.dashboard = DashboardRepository(conn)


class PostgresUnitOfWork(uow.PostgresUnitOfWork):
    tx = PostgresTx
