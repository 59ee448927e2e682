-- Profiles (issue 18): browser state that outlives a session, owned by warm_pool. sessions serves
-- the public API and asks over the warm_pool.profiles RPC; the archives are sealed blobs in
-- profile_blobs (0004) or S3, one per version.
CREATE TABLE profiles (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL,
    name                text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    size_bytes          bigint NOT NULL DEFAULT 0,
    current_version     integer,            -- NULL: nothing saved yet
    next_version        integer NOT NULL DEFAULT 1,
    last_session_id     uuid,
    -- Origins whose storage the current version holds: captured again at the next save.
    origins             text[] NOT NULL DEFAULT '{}',
    has_directory       boolean NOT NULL DEFAULT false,  -- saved by a browser-mode session
    -- The persisting-use lock: the one session whose end saves the profile.
    persist_session_id  uuid,
    persist_locked_at   timestamptz,
    deleted_at          timestamptz         -- invisible from then; rows and blobs go next
);
CREATE INDEX profiles_tenant ON profiles (tenant_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX profiles_deleted ON profiles (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE profile_versions (
    profile_id  uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    blob_key    text NOT NULL,
    size_bytes  bigint NOT NULL,
    key_id      text NOT NULL,               -- which PROFILE_ENCRYPTION_KEY entry sealed it
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (profile_id, version)
);

-- One row per session that leased with a profile: active → saving → done.
CREATE TABLE profile_uses (
    session_id   uuid PRIMARY KEY,
    profile_id   uuid NOT NULL,
    tenant_id    uuid NOT NULL,
    persist      boolean NOT NULL,
    isolation    text NOT NULL,
    version      integer,                    -- the version it started from
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'saving', 'done')),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX profile_uses_live ON profile_uses (profile_id) WHERE state <> 'done';

-- When a tenant was canceled: its profiles go PROFILE_RETENTION_S later.
ALTER TABLE tenants ADD COLUMN canceled_at timestamptz;
