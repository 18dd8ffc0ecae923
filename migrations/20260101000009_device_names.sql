-- migrate:up
-- Named devices: a user names a session ("Work laptop") on their "your devices" page.
-- Up to 100 characters of any text the middleware stores (its data rules refuse NUL and
-- unpaired surrogates before a name gets here); NULL for none. Not session content: a
-- rename bumps no version and notifies nobody, since device lists are read from the
-- database. The app role may set it (its statement names the session's own user).
ALTER TABLE sessions.session ADD COLUMN device_name text NULL
  CONSTRAINT session_device_name_length
  CHECK (device_name IS NULL OR char_length(device_name) BETWEEN 1 AND 100);
GRANT UPDATE (device_name) ON sessions.session TO sessions_app;

-- migrate:down
REVOKE UPDATE (device_name) ON sessions.session FROM sessions_app;
ALTER TABLE sessions.session DROP COLUMN device_name;
