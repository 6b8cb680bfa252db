"""Schema migrations, applied in order, each once, inside one transaction.

Append new migrations; never edit one that has shipped. ``PRAGMA user_version``
records how many have been applied.

Secret until release: no table holds a stage's text or a place. Runs keep the
scenario file's path and SHA-256; the text is re-read from the file.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: runs, dispatches, deliveries, rooms, audit, meta
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scenario_id TEXT NOT NULL,
        source_path TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('armed', 'disarmed', 'aborted', 'finished')),
        armed_by TEXT NOT NULL,
        armed_at TEXT NOT NULL,
        control_room TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE UNIQUE INDEX runs_one_armed ON runs (scenario_id) WHERE state = 'armed';

    CREATE TABLE dispatches (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        stage_id TEXT NOT NULL,
        stage_index INTEGER NOT NULL,
        due_at TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('scheduled', 'held', 'releasing', 'released', 'skipped', 'cancelled')),
        note TEXT,
        released_at TEXT,
        reported INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, city_id, stage_id)
    );

    CREATE TABLE deliveries (
        run_id INTEGER NOT NULL,
        scenario_id TEXT NOT NULL,
        city_id TEXT NOT NULL,
        stage_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        part TEXT NOT NULL CHECK (part IN ('text', 'location')),
        state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
        txn_id TEXT NOT NULL UNIQUE,
        event_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        due_at TEXT NOT NULL,
        sent_at TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, city_id, stage_id, room_id, part),
        FOREIGN KEY (run_id, city_id, stage_id)
            REFERENCES dispatches (run_id, city_id, stage_id) ON DELETE CASCADE
    );
    CREATE INDEX deliveries_by_state ON deliveries (state);

    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY,
        membership TEXT NOT NULL CHECK (membership IN ('joined', 'left', 'declined')),
        opted_in_by TEXT,
        note TEXT,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        command TEXT NOT NULL,
        result TEXT NOT NULL
    );

    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: live steering — holds, delays, redirects, check-ins, private (DM) opt-in,
    # drills. A drill run may coexist with a real run of the same scenario.
    """
    ALTER TABLE runs ADD COLUMN drill_room TEXT;
    ALTER TABLE runs ADD COLUMN drill_speed REAL;
    DROP INDEX runs_one_armed;
    CREATE UNIQUE INDEX runs_one_armed ON runs (scenario_id)
        WHERE state = 'armed' AND drill_room IS NULL;

    CREATE TABLE holds (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        PRIMARY KEY (run_id, city_id)
    );

    CREATE TABLE delays (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (run_id, city_id)
    );

    -- A redirect typed by the core group. It is content (a place), kept because a
    -- restart must not forget a change of location; purge deletes it.
    CREATE TABLE redirects (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        place_id TEXT NOT NULL,
        name TEXT NOT NULL,
        lat REAL,
        lon REAL,
        revision INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (run_id, city_id, place_id)
    );

    CREATE TABLE checkins (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        stage_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at TEXT NOT NULL,
        via TEXT NOT NULL CHECK (via IN ('here', 'reaction')),
        PRIMARY KEY (run_id, city_id, stage_id, user_id)
    );

    CREATE TABLE direct_participants (
        scenario_id TEXT NOT NULL,
        city_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        joined_at TEXT NOT NULL,
        PRIMARY KEY (scenario_id, city_id, user_id)
    );
    CREATE INDEX direct_by_room ON direct_participants (room_id);
    CREATE INDEX deliveries_by_event ON deliveries (event_id);
    """,
    # 3: room upgrades. A served room's m.room.tombstone names its successor; the
    # bot follows when it is invited there (or can join), and a city listing the
    # old room id is served in the new one.
    """
    CREATE TABLE room_successors (
        room_id TEXT PRIMARY KEY,
        successor TEXT NOT NULL,
        upgraded_by TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX room_successors_by_successor ON room_successors (successor);
    """,
    # 4: the dead-man's switch (issue 13). One row per delivery the homeserver is
    # asked to send itself at instant + after unless cancelled. delay_id is a
    # secret (Synapse lets anyone holding it cancel or send the event without
    # logging in): kept only while the event may still fire, cleared after.
    # Deleted with its run (so by !purge). Expect renumbering at merge.
    """
    CREATE TABLE delayed_events (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        city_id TEXT NOT NULL,
        stage_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        part TEXT NOT NULL CHECK (part IN ('text', 'location')),
        generation INTEGER NOT NULL DEFAULT 1,
        txn_id TEXT NOT NULL UNIQUE,
        delay_id TEXT,
        instant TEXT NOT NULL,
        due_at TEXT NOT NULL,
        schedule_at TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('pending', 'scheduling', 'scheduled', 'cancelled', 'sent', 'failed')),
        note TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, city_id, stage_id, room_id, part)
    );
    CREATE INDEX delayed_events_live ON delayed_events (state, schedule_at)
        WHERE state IN ('pending', 'scheduling', 'scheduled');
    """,
    # 5: run identity. A run's key is the event id of the !arm / !drill command
    # that started it (the same for every bot reading that control room); it is
    # in every sent event's dispatch tag and txn id. Runs from before keep "".
    """
    ALTER TABLE runs ADD COLUMN run_key TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX runs_by_key ON runs (run_key) WHERE run_key != '';
    ALTER TABLE deliveries ADD COLUMN run_key TEXT NOT NULL DEFAULT '';
    """,
    # 6: pods and roles (issue 14). A private participant's pod is assigned by the
    # bot at !join and kept with the row (a !stop deletes the row: no list of who
    # left); their role is what they picked with !role. A check-in records the pod
    # and role it counts for, so gates per pod or role count each person once.
    # pod_keys: the per-scenario secret of the assignment's level order
    # (bot.scenario.assign), deleted by !purge with the scenario's participants.
    """
    ALTER TABLE direct_participants ADD COLUMN pod_id TEXT;
    ALTER TABLE direct_participants ADD COLUMN role_id TEXT;
    ALTER TABLE checkins ADD COLUMN pod_id TEXT;
    ALTER TABLE checkins ADD COLUMN role_id TEXT;
    CREATE TABLE pod_keys (
        scenario_id TEXT PRIMARY KEY,
        secret BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
)
