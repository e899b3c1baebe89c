"""The coordination schema: its tables, its version, and creating or checking it on first use.

Every table is named ``kling_*`` in the connection's schema (its ``search_path``), so one
database can hold several independent installations, one per PostgreSQL schema.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalError

__all__ = ["SCHEMA_VERSION", "prepare"]

#: Raised on any change below; a database set up by a newer version is refused, not guessed at.
SCHEMA_VERSION = 1
#: "KLNG": the advisory lock that lets one process at a time create the schema.
_CREATE_LOCK = 0x4B4C4E47

_TABLES = f"""
CREATE TABLE kling_meta (
    version integer NOT NULL
);
INSERT INTO kling_meta (version) VALUES ({SCHEMA_VERSION});

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


async def prepare(connection: Any, where: str) -> None:
    """Create the schema when the database has none; refuse one newer than this code."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK)
        if await connection.fetchval("SELECT to_regclass('kling_meta')") is None:
            await connection.execute(_TABLES)
            await connection.execute(_FUNCTIONS)
            return
        version = await connection.fetchval("SELECT max(version) FROM kling_meta")
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


# Taking a slot and recording the intent are one transaction: this function, called as one
# statement. The advisory lock per account serialises slot takers, so the count it reads is
# the count it acts on. Answers 'inserted', 'adopted' (an entry of this owner and fence that
# now holds a slot), 'kept' (it held one already, or needs none: `p_slot` false), 'full',
# or 'exists' (someone else's).
_FUNCTIONS = """
CREATE FUNCTION kling_intent(
    p_namespace text, p_key text, p_account text, p_request text, p_now double precision,
    p_owner text, p_fence bigint, p_lease double precision, p_slot boolean,
    OUT outcome text, OUT stored text, OUT fence bigint
) LANGUAGE plpgsql AS $$
DECLARE
    found_row kling_entry%ROWTYPE;
    room double precision;
    used bigint;
    existed boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kling_slots:' || p_account));
    SELECT * INTO found_row FROM kling_entry
        WHERE namespace = p_namespace AND key = p_key FOR UPDATE;
    existed := FOUND;
    IF existed THEN
        stored := found_row.request;
        fence := found_row.fence;
        IF found_row.owner IS DISTINCT FROM p_owner OR found_row.fence <> p_fence THEN
            outcome := 'exists';
            RETURN;
        END IF;
        IF found_row.holds_slot OR NOT p_slot THEN
            outcome := 'kept';
            RETURN;
        END IF;
    END IF;
    SELECT coalesce(least(window_size, quota), quota, window_size) INTO room
        FROM kling_account WHERE name = p_account;
    IF room IS NOT NULL AND p_slot THEN
        SELECT count(*) INTO used FROM kling_entry WHERE account = p_account AND holds_slot;
        IF used >= greatest(1, floor(room)) THEN
            outcome := 'full';
            RETURN;
        END IF;
    END IF;
    IF existed THEN
        UPDATE kling_entry SET holds_slot = true WHERE namespace = p_namespace AND key = p_key;
        outcome := 'adopted';
        RETURN;
    END IF;
    INSERT INTO kling_entry (namespace, key, account, request, state, updated_at, owner, fence,
                             lease_until, holds_slot)
        VALUES (p_namespace, p_key, p_account, p_request, 'intent', p_now, p_owner, 1,
                clock_timestamp() + make_interval(secs => p_lease), p_slot);
    outcome := 'inserted';
    fence := 1;
END;
$$;
"""
