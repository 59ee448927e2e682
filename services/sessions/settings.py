from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class SessionsSettings(ServiceSettings):
    http_port: int = 8000
    # This service's own database login, for an operator who manages roles (DATABASE_URL unused then).
    sessions_database_url: SecretStr | None = None
    # Base URL customers reach this service at; the CDP URL is its ws:// (wss://) form.
    public_url: str = "http://127.0.0.1:8000"
    lease_timeout_s: float = 10
    disconnect_grace_s: float = 5
    reaper_interval_s: float = 1
    default_timeout_s: int = 300
    default_idle_timeout_s: int = 60
    # A revoked API key keeps working on other replicas for at most this long.
    api_key_cache_s: float = 2
    # A CDP message (either direction) larger than this closes its relay with 1009.
    max_cdp_message_bytes: int = 64 * 2**20
    # Parallel CDP relays of one session, counted across replicas in its row.
    max_relays_per_session: int = 4
    # Deadline of each CDP exchange the platform itself makes with a browser (screenshots).
    cdp_call_timeout_s: float = 10
    max_api_keys_per_tenant: int = 25
    # Context leases held ready per tenant after its context sessions start (reservations.py); 0: none.
    context_reserve: int = Field(1, ge=0, le=16)
    # An unused one is released after this long (or half the confirmation time warm_pool gives it, if shorter).
    context_reserve_ttl_s: float = Field(10, gt=0)

    def own_database_url(self) -> str | None:
        return self.sessions_database_url.get_secret_value() if self.sessions_database_url else None
