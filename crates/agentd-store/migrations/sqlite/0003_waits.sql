-- A paused run (awaiting_input) keeps the deadline of its wait for a human
-- in lease_expires_at; this finds the ones that ran out.
CREATE INDEX runs_by_wait ON runs (lease_expires_at) WHERE status = 'awaiting_input';
