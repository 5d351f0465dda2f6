"""Names and default numbers shared across healthgate, each with the reason it exists."""

from __future__ import annotations

#: Celery task names are part of the wire format between beat, workers and producers:
#: renaming one strands messages already in the broker.
TICK_TASK = "healthgate.tick"
DISPATCH_TASK = "healthgate.dispatch"

#: One queue for everything keeps the embedded default simple; operators can route
#: dispatch to its own queue with Celery's ``task_routes`` without code changes.
DEFAULT_QUEUE = "healthgate"

#: Beat claims due messages this often. Short, because a throttled message's
#: ``not_before`` is only as precise as the tick; the claim itself is one indexed query.
TICK_SECONDS = 2.0

#: Messages handed to one dispatch task. Large enough to amortise the broker round trip
#: and the store transaction, small enough that one slow provider call does not hold many.
DISPATCH_BATCH = 50

#: Messages claimed by one tick at most, so a huge backlog is fed to workers in slices.
CLAIM_LIMIT = 1000

#: Claimed but not yet dispatched messages allowed at once; above it a tick claims
#: nothing, which keeps the broker queue (and the work lost to a crash) short.
MAX_IN_FLIGHT = 5000

#: How long a claim holds. A dispatch task that has not finished by then is presumed
#: dead and its messages return to the queue; its fence token no longer matches.
LEASE_SECONDS = 120.0

#: A tick older than this is useless (the next one is coming), so the broker drops it.
TICK_EXPIRES_SECONDS = 10.0

#: SQLite waits this long for the writer lock before failing, which covers a CLI
#: command and a worker writing at the same moment.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

#: File names under the data directory of the embedded default.
SQLITE_FILE = "healthgate.db"
BROKER_DIR = "broker"
BEAT_SCHEDULE_FILE = "celerybeat-schedule"
SEND_LOG_FILE = "sends.jsonl"

#: Every Redis key of the limiter starts with this, so a shared Redis (or the broker's
#: database) can hold healthgate's counters next to other data and be cleaned by prefix.
LIMITS_KEY_PREFIX = "healthgate:limits:"

#: A send stays in Redis this long after it happened: the longest cap window (a day).
#: Each key expires when its own window has passed, so idle lines leave nothing behind.
LIMITS_DAY_SECONDS = 86_400
