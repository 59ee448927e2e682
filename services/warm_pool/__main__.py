"""python -m services.warm_pool — settings → migrations → broker + HTTP → run until signalled."""
import logging
import socket
from functools import partial
from pathlib import Path

from services.warm_pool import handlers, handlers_profiles, http, subscribers
from services.warm_pool.downloads import Downloads
from services.warm_pool.handlers_profiles import ProfileSessions
from services.warm_pool.profiles import ProfileStore
from services.warm_pool.ports import Pool, UnitOfWork
from services.warm_pool.settings import WarmPoolSettings
from services.warm_pool.uow import PostgresUnitOfWork
from shared.service import Runtime, run, serve

log = logging.getLogger(__name__)


def make_pool(settings: WarmPoolSettings, uow: UnitOfWork, downloads: Downloads | None = None) -> Pool:
    if settings.warm_pool_backend == "kubernetes":
        from services.warm_pool.adapters.kubernetes import KubernetesPods
        from services.warm_pool.pool_cluster import ClusterPool
        return ClusterPool(KubernetesPods.from_settings(settings), uow, settings)
    from services.warm_pool.adapters.local import LocalChromium
    from services.warm_pool.pool_local import LocalPool
    backend = LocalChromium(chromium_path=settings.chromium_path, profile_root=settings.profile_root,
                            launch_timeout_s=settings.launch_timeout_s,
                            advertise_host=advertised_host(settings.browser_advertise_host),
                            sandbox=make_sandbox(settings), cdp_timeout_s=settings.context_cdp_timeout_s,
                            keeper=downloads)
    return LocalPool(backend, uow, settings)


def make_sandbox(settings: WarmPoolSettings):
    """The local sandbox, built before anything else: a host that cannot build it stops here."""
    from services.warm_pool.adapters.local import LocalChromium
    from services.warm_pool.adapters.sandbox import Sandbox, SandboxUnavailable
    from services.warm_pool.adapters.sandbox_config import SandboxConfig
    if settings.browser_sandbox == "off":
        log.warning("BROWSER_SANDBOX=off: browsers run unsandboxed, so this replica serves one tenant only")
        return None
    sandbox = Sandbox(SandboxConfig(
        host_ports=settings.host_ports(), net_cidr=settings.browser_net_cidr,
        blocked_networks=settings.blocked_networks(), uid_base=settings.browser_uid_base,
        state_dir=settings.browser_state_dir, browser_memory_mib=settings.browser_memory_mib,
        browser_pids=settings.browser_pids_max, browser_cpu_weight=settings.browser_cpu_weight,
        tenant_memory_fraction=settings.browser_tenant_memory_fraction,
        browser_disk_mib=settings.browser_disk_mib, max_connections=settings.browser_max_connections,
        total_memory_fraction=settings.browser_total_memory_fraction,
    ), chromium_path=settings.chromium_path, profile_root=settings.profile_root)
    try:
        sandbox.start(alive=LocalChromium.live_warm_pool)
    except SandboxUnavailable as exc:
        raise SystemExit(f"warm_pool: cannot sandbox browsers on this host: {exc}. Fix that, or set "
                         "BROWSER_SANDBOX=off to run unsandboxed (one tenant per replica).") from exc
    return sandbox


def make_profiles(settings: WarmPoolSettings, db) -> ProfileSessions:
    """The profile store (PROFILE_STORE) and its key ring; without PROFILE_ENCRYPTION_KEY every
    profile operation answers profiles_unavailable."""
    from services.warm_pool.adapters.blobs import PostgresBlobs, S3Blobs
    ring = settings.profile_key_ring()
    if ring is None:
        log.warning("PROFILE_ENCRYPTION_KEY is not set: profiles are unavailable on this deployment")
    if settings.profile_store == "s3":
        secret = lambda s: s.get_secret_value() if s else None  # noqa: E731
        blobs = S3Blobs(bucket=settings.profile_s3_bucket, endpoint_url=settings.profile_s3_endpoint_url,
                        region=settings.profile_s3_region, access_key=secret(settings.profile_s3_access_key),
                        secret_key=secret(settings.profile_s3_secret_key))
    else:
        blobs = PostgresBlobs(db)
    store = ProfileStore(blobs=blobs, ring=ring, max_bytes=settings.profile_max_mib * 2**20,
                         keep=settings.profile_versions_kept)
    return ProfileSessions(store, cdp_timeout_s=settings.context_cdp_timeout_s,
                           save_concurrency=settings.profile_save_concurrency)


def advertised_host(setting: str | None) -> str | None:
    """"auto" means this container's own address (one per replica under Compose)."""
    if setting == "auto":
        return socket.gethostbyname(socket.gethostname())
    return setting


async def build(runtime: Runtime):
    settings: WarmPoolSettings = runtime.settings
    uow = PostgresUnitOfWork(runtime.pool)
    downloads = Downloads(uow, root=settings.downloads_root, max_bytes=settings.downloads_max_mib * 2**20,
                          retention_s=settings.downloads_retention_s)
    pool = make_pool(settings, uow, downloads)
    await handlers.start_up(pool=pool)
    profiles = make_profiles(settings, runtime.pool)
    subscribers.register(runtime, pool=pool, uow=uow, profiles=profiles, downloads=downloads)
    cluster = settings.warm_pool_backend == "kubernetes"
    monitor_s = settings.kube_monitor_interval_s if cluster else settings.monitor_interval_s
    runtime.every(monitor_s, partial(handlers.check_crashes, pool=pool, uow=uow))
    runtime.every(settings.reconcile_interval_s, partial(
        handlers.reconcile, pool=pool, uow=uow, confirm_timeout_s=settings.lease_confirm_timeout_s))
    runtime.every(settings.prune_interval_s, partial(
        handlers.prune, uow=uow, retention_s=settings.dead_browser_retention_s))
    runtime.every(settings.profile_sweep_interval_s, partial(
        handlers_profiles.sweep, uow=uow, profiles=profiles, retention_s=settings.profile_retention_s,
        stale_after_s=settings.lease_confirm_timeout_s + 30))
    runtime.every(settings.downloads_sweep_interval_s, downloads.sweep)
    runtime.on_stop(partial(handlers.shut_down, pool=pool))
    runtime.on_stop(profiles.close)
    return http.create_app(runtime, uow=uow)


def main() -> None:
    settings = WarmPoolSettings()
    run(serve(name="warm_pool", schema="warm_pool", settings=settings,
               migrations_dir=Path(__file__).with_name("migrations"), build=build))


if __name__ == "__main__":
    main()
