-- Sealed (compressed, AES-GCM encrypted) profile archives, by `<tenant>/<profile>/<version>`,
-- when PROFILE_STORE is postgres (the default); S3-compatible storage holds them otherwise.
CREATE TABLE profile_blobs (
    key         text PRIMARY KEY,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
