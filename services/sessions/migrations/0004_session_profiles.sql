-- Profiles (issue 18): the profile a session started from, whether its end saves back to it, and
-- what warm_pool said of that save (warm_pool.profile_saved).
ALTER TABLE sessions
    ADD COLUMN profile_id uuid,
    ADD COLUMN profile_persist boolean,
    ADD COLUMN profile_save text CHECK (profile_save IN ('pending', 'saved', 'failed', 'not_saved')),
    ADD COLUMN profile_save_message text;
