"""The coordination schema: its tables, its version, and creating or checking it on first use.

Every table is named ``kling_*`` in the connection's schema (its ``search_path``), so one
database can hold several independent installations, one per PostgreSQL schema.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalError

__all__ = ["SCHEMA_VERSION", "prepare"]

#: Raised on any change below; a database set up by a newer version is refused, not guessed at.
SCHEMA_VERSION = 4
#: "KLNG": the advisory lock that lets one process at a time create the schema.
_CREATE_LOCK = 0x4B4C4E47

_TABLES = """
CREATE TABLE kling_meta (
    version integer NOT NULL
);
INSERT INTO kling_meta (version) VALUES (1);

-- One row per Kling account: its parallel-task quota and window, its request-rate timeline.
CREATE TABLE kling_account (
    name text PRIMARY KEY,
    quota integer CHECK (quota IS NULL OR quota > 0),
    window_size double precision,
    epoch bigint NOT NULL DEFAULT 0,
    rate_tat double precision NOT NULL DEFAULT 0
);

-- The journal of record: one row per request key and namespace.
CREATE TABLE kling_entry (
    seq bigserial NOT NULL,
    namespace text NOT NULL,
    key text NOT NULL,
    account text NOT NULL,
    request text NOT NULL,
    state text NOT NULL CHECK (state IN ('intent', 'submitted', 'finished')),
    task_id text,
    task_kind text,
    task_status text,
    task_raw text,
    error_type text,
    error_message text,
    updated_at double precision NOT NULL,
    owner text,
    fence bigint NOT NULL DEFAULT 1,
    lease_until timestamptz,
    holds_slot boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX kling_entry_slots ON kling_entry (account) WHERE holds_slot;
CREATE INDEX kling_entry_owner ON kling_entry (owner) WHERE owner IS NOT NULL;
CREATE INDEX kling_entry_order ON kling_entry (namespace, seq);
"""

# From each version to the next; a new database is made at version 1 and brought up the same
# way, so every installation walks the same steps.
_UPGRADES = {
    # An intent waiting for a slot of the account: nothing was sent for it.
    1: """
ALTER TABLE kling_entry ADD COLUMN queued boolean NOT NULL DEFAULT false;
CREATE INDEX kling_entry_queue ON kling_entry (account, seq) WHERE queued;
""",
    # The account's window is shared (kling_narrow, kling_intent's epoch): functions only.
    2: "SELECT 1",
    # Channels are named per schema (kling_channel): functions only.
    3: "SELECT 1",
}


async def prepare(connection: Any, where: str) -> None:
    """Create the schema when the database has none, bring an older one up to date; refuse
    one newer than this code."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK)
        if await connection.fetchval("SELECT to_regclass('kling_meta')") is None:
            await connection.execute(_TABLES)
        version = await connection.fetchval("SELECT max(version) FROM kling_meta")
        if version is not None and 1 <= version < SCHEMA_VERSION:
            await _refuse_under_older_processes(connection, where, version)
            for step in range(version, SCHEMA_VERSION):
                await connection.execute(_UPGRADES[step])
            await connection.execute(_FUNCTIONS)
            await connection.execute("UPDATE kling_meta SET version = $1", SCHEMA_VERSION)
            return
    if version is None or version < 1:
        raise JournalError(
            where,
            f"The database {where} has a kling_meta table without a schema version; "
            "point KLING_DATABASE_URL at another database or schema.",
        )
    if version > SCHEMA_VERSION:
        raise JournalError(
            where,
            f"The database {where} was set up by a newer kling_async (coordination schema "
            f"{version}; this version reads up to {SCHEMA_VERSION}); upgrade kling_async on "
            "this host to join the others.",
        )


async def _refuse_under_older_processes(connection: Any, where: str, version: int) -> None:
    """Raise while processes of the older version work in the database: the upgrade would
    change the statements they send under them. A process that holds keys renews their
    leases; one that died lets them run out within a lease."""
    working = await connection.fetchval(
        "SELECT count(*) FROM kling_entry WHERE owner IS NOT NULL "
        "AND lease_until > clock_timestamp()"
    )
    if not working:
        return
    keys = "1 key is" if working == 1 else f"{working} keys are"
    raise JournalError(
        where,
        f"The database {where} has coordination schema {version} and this version of "
        f"kling_async needs {SCHEMA_VERSION}, but {keys} held under a live lease there by "
        "processes of the older version. Stop the processes of the older version (the "
        "claims of one that died run out within its lease), then start this one again; "
        "it upgrades the schema on its first connection.",
    )


# The account's slots. A slot is taken with the intent, in one transaction (`kling_intent`,
# one statement). When the account runs all it may, the intent is recorded *queued*: nothing
# is sent for it until a slot is handed to it. Whatever gives a slot back (`kling_finish`,
# `kling_forget`) hands the free slots to the oldest queued intents of live processes in the
# same transaction and tells each owner by NOTIFY, so a waiting process sends no statement
# to learn that it may go on. An advisory lock per account serialises everything that counts
# slots, so the count read is the count acted on; it is always taken before any row lock.
# Channels: kling_taken (a key was taken: others skip it without asking), kling_grants (a
# queued intent got its slot); payloads are JSON arrays [owner, namespace, key]. Each channel
# is named per schema (`kling_channel`): NOTIFY reaches the whole database, and the
# installations in other schemas must not hear these.
_FUNCTIONS = """
CREATE OR REPLACE FUNCTION kling_channel(p_name text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT p_name || '_' || left(md5(current_schema()), 12)
$$;

CREATE OR REPLACE FUNCTION kling_lock(p_account text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('kling_slots:' || p_account))
$$;

CREATE OR REPLACE FUNCTION kling_notify(
    p_channel text, p_owner text, p_namespace text, p_key text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_array(p_owner, p_namespace, p_key)::text;
BEGIN
    -- NOTIFY takes at most 8000 bytes; a longer key is learnt the slow way (by asking).
    IF octet_length(payload) < 7900 THEN
        PERFORM pg_notify(kling_channel(p_channel), payload);
    END IF;
END;
$$;

-- Slots the account may still take (NULL: no limit). The window narrows the quota.
CREATE OR REPLACE FUNCTION kling_room(p_account text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cap double precision;
BEGIN
    SELECT coalesce(least(a.window_size, a.quota), a.quota, a.window_size) INTO cap
        FROM kling_account a WHERE a.name = p_account;
    IF cap IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN greatest(1, floor(cap))::bigint - (
        SELECT count(*) FROM kling_entry e WHERE e.account = p_account AND e.holds_slot);
END;
$$;

-- Hand free slots to the oldest queued intents whose owners live; the caller holds the lock.
CREATE OR REPLACE FUNCTION kling_grant(p_account text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    room bigint := kling_room(p_account);
    granted record;
BEGIN
    IF room IS NOT NULL AND room <= 0 THEN
        RETURN;
    END IF;
    FOR granted IN
        UPDATE kling_entry e SET holds_slot = true, queued = false
        WHERE (e.namespace, e.key) IN (
            SELECT q.namespace, q.key FROM kling_entry q
            WHERE q.account = p_account AND q.queued AND q.lease_until > clock_timestamp()
            ORDER BY q.seq LIMIT room FOR UPDATE SKIP LOCKED)
        RETURNING e.owner, e.namespace, e.key
    LOOP
        PERFORM kling_notify('kling_grants', granted.owner, granted.namespace, granted.key);
    END LOOP;
END;
$$;

-- Record the intent and take a slot for it. Answers 'inserted' (a new entry, or a queued one
-- of a process that is gone, taken over: it sent nothing), 'queued' (recorded; waits for a
-- slot), 'adopted' (an entry of this owner and fence that now holds a slot), 'kept' (it held
-- one already, or needs none: `p_slot` false), or 'exists' (someone else's; `ahead` then
-- names the keys others took after it, which a process running the same batch meets next).
-- `seen_epoch`: the account window's epoch as the slot was asked for (see kling_narrow).
-- Someone else's live entry is answered without the account's lock.
DROP FUNCTION IF EXISTS kling_intent(
    text, text, text, text, double precision, text, bigint, double precision, boolean);
CREATE FUNCTION kling_intent(
    p_namespace text, p_key text, p_account text, p_request text, p_now double precision,
    p_owner text, p_fence bigint, p_lease double precision, p_slot boolean,
    OUT outcome text, OUT stored text, OUT fence bigint, OUT ahead text[],
    OUT seen_epoch bigint
) LANGUAGE plpgsql AS $$
DECLARE
    found_row kling_entry%ROWTYPE;
    existed boolean;
    theirs boolean := false;
    room bigint;
    free boolean;
BEGIN
    FOR lap IN 1..2 LOOP
        IF lap = 2 THEN
            PERFORM kling_lock(p_account);
            SELECT * INTO found_row FROM kling_entry e
                WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
        ELSE
            SELECT * INTO found_row FROM kling_entry e
                WHERE e.namespace = p_namespace AND e.key = p_key;
        END IF;
        existed := FOUND;
        IF existed THEN
            stored := found_row.request;
            fence := found_row.fence;
            theirs := found_row.owner IS DISTINCT FROM p_owner OR found_row.fence <> p_fence;
            IF theirs AND NOT (found_row.queued AND (found_row.owner IS NULL
                                                    OR found_row.lease_until < clock_timestamp()))
            THEN
                outcome := 'exists';
                ahead := ARRAY(SELECT e.key FROM kling_entry e
                    WHERE e.namespace = p_namespace AND e.seq > found_row.seq
                        AND e.owner IS DISTINCT FROM p_owner
                    ORDER BY e.seq LIMIT 10000);
                RETURN;
            END IF;
            IF NOT theirs AND (found_row.holds_slot OR NOT p_slot) THEN
                outcome := 'kept';
                RETURN;
            END IF;
        END IF;
    END LOOP;
    room := kling_room(p_account);
    free := NOT p_slot OR room IS NULL OR room > 0;
    SELECT a.epoch INTO seen_epoch FROM kling_account a WHERE a.name = p_account;
    IF NOT existed THEN
        INSERT INTO kling_entry (namespace, key, account, request, state, updated_at, owner,
                                 fence, lease_until, holds_slot, queued)
            VALUES (p_namespace, p_key, p_account, p_request, 'intent', p_now, p_owner, 1,
                    clock_timestamp() + make_interval(secs => p_lease), p_slot AND free,
                    NOT free);
        fence := 1;
    ELSIF theirs THEN
        UPDATE kling_entry e SET owner = p_owner, fence = e.fence + 1, request = p_request,
                updated_at = p_now, holds_slot = free, queued = NOT free,
                lease_until = clock_timestamp() + make_interval(secs => p_lease)
            WHERE e.namespace = p_namespace AND e.key = p_key
            RETURNING e.fence INTO fence;
        stored := p_request;
    ELSE
        UPDATE kling_entry e SET holds_slot = free, queued = NOT free
            WHERE e.namespace = p_namespace AND e.key = p_key;
        outcome := CASE WHEN free THEN 'adopted' ELSE 'queued' END;
        RETURN;
    END IF;
    PERFORM kling_notify('kling_taken', p_owner, p_namespace, p_key);
    outcome := CASE WHEN free THEN 'inserted' ELSE 'queued' END;
END;
$$;

-- A 1303 (over the account's parallel limit: another client uses it too) halves the shared
-- window, once per epoch: 1303s of creates whose slots were asked for before the last halving
-- are the same news. Each create that succeeds widens it again by 1/window (see the journal's
-- record_task), until it reaches the quota and is dropped. The window now, NULL if unchanged.
CREATE OR REPLACE FUNCTION kling_narrow(p_account text, p_epoch bigint)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
    used bigint;
    narrowed double precision;
BEGIN
    SELECT count(*) INTO used FROM kling_entry e WHERE e.account = p_account AND e.holds_slot;
    UPDATE kling_account a
        SET window_size = greatest(1.0, coalesce(least(a.window_size, a.quota), a.quota,
                                                 a.window_size, used) / 2.0),
            epoch = a.epoch + 1
        WHERE a.name = p_account AND a.epoch = p_epoch
        RETURNING a.window_size INTO narrowed;
    RETURN narrowed;
END;
$$;

-- The outcome of a key written by the owner of `p_fence`; its slot goes to the next in line.
CREATE OR REPLACE FUNCTION kling_finish(
    p_namespace text, p_key text, p_fence bigint, p_task_id text, p_kind text,
    p_status text, p_raw text, p_error_type text, p_error_message text,
    p_now double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    account_name text;
BEGIN
    SELECT e.account INTO account_name FROM kling_entry e
        WHERE e.namespace = p_namespace AND e.key = p_key;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM kling_lock(account_name);
    UPDATE kling_entry e SET state = 'finished', task_id = coalesce(p_task_id, e.task_id),
            task_kind = coalesce(p_kind, e.task_kind),
            task_status = coalesce(p_status, e.task_status),
            task_raw = coalesce(p_raw, e.task_raw), error_type = p_error_type,
            error_message = p_error_message, updated_at = p_now, owner = NULL,
            lease_until = NULL, holds_slot = false, queued = false
        WHERE e.namespace = p_namespace AND e.key = p_key AND e.fence = p_fence
            AND (p_task_id IS NULL OR e.task_id IS NULL OR e.task_id = p_task_id);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM kling_grant(account_name);
    RETURN true;
END;
$$;

-- Remove a key whose create surely made nothing; its slot goes to the next in line.
CREATE OR REPLACE FUNCTION kling_forget(p_namespace text, p_key text, p_fence bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    account_name text;
BEGIN
    SELECT e.account INTO account_name FROM kling_entry e
        WHERE e.namespace = p_namespace AND e.key = p_key;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM kling_lock(account_name);
    DELETE FROM kling_entry e WHERE e.namespace = p_namespace AND e.key = p_key
        AND e.fence = p_fence AND e.state <> 'submitted';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM kling_grant(account_name);
    RETURN true;
END;
$$;

-- A process's one statement a tick: renew the leases of `p_owner` (when `p_renew`; rows
-- being written just now are skipped, renewed at the next tick), name those of its queued
-- keys `p_queued` that got a slot ('granted'), and give the entries of the keys `p_waited`
-- that no live process holds any more ('released'; a NULL request: gone).
CREATE OR REPLACE FUNCTION kling_tick(
    p_owner text, p_lease double precision, p_renew boolean, p_queued text[],
    p_namespace text, p_waited text[]
) RETURNS TABLE (
    o_what text, o_key text, o_request text, o_state text, o_task_raw text, o_task_kind text,
    o_error_type text, o_error_message text, o_updated_at double precision, o_fence bigint,
    o_queued boolean
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_renew THEN
        RETURN QUERY
            WITH renewed AS (
                UPDATE kling_entry e
                    SET lease_until = clock_timestamp() + make_interval(secs => p_lease)
                    WHERE (e.namespace, e.key) IN (
                        SELECT s.namespace, s.key FROM kling_entry s
                        WHERE s.owner = p_owner FOR UPDATE SKIP LOCKED)
                    RETURNING e.key, e.holds_slot)
            SELECT 'granted'::text, r.key, NULL::text, NULL::text, NULL::text, NULL::text,
                   NULL::text, NULL::text, NULL::double precision, NULL::bigint, NULL::boolean
                FROM renewed r WHERE r.holds_slot AND r.key = ANY(p_queued);
    END IF;
    RETURN QUERY
        SELECT 'released'::text, w.k, e.request, e.state, e.task_raw, e.task_kind,
               e.error_type, e.error_message, e.updated_at, e.fence, e.queued
            FROM unnest(p_waited) AS w(k)
            LEFT JOIN kling_entry e ON e.namespace = p_namespace AND e.key = w.k
            WHERE e.key IS NULL OR e.state = 'finished' OR e.owner IS NULL
                OR e.lease_until < clock_timestamp();
END;
$$;
"""
