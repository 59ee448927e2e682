-- Context sessions (issue 17): a BrowserContext in a warm browser of the tenant's, which the CDP
-- relay confines the client to. context_id and downloads_path come from warm_pool's lease reply.
ALTER TABLE sessions
    ADD COLUMN isolation text NOT NULL DEFAULT 'browser' CHECK (isolation IN ('browser', 'context')),
    ADD COLUMN context_id text,
    ADD COLUMN downloads_path text;
