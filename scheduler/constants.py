"""Names and default numbers shared across healthgate, each with the reason it exists."""

from __future__ import annotations

#: Celery task names are part of the wire format between beat, workers and producers:
#: renaming one strands messages already in the broker.
TICK_TASK = "healthgate.tick"
DISPATCH_TASK = "healthgate.dispatch"
POLL_TASK = "healthgate.poll"
PURGE_TASK = "healthgate.purge"
#: Enqueue through the broker, for an application that sends Celery tasks by name and
#: does not import healthgate: the arguments are JSON, times ISO 8601 with an offset.
ENQUEUE_TASK = "healthgate.enqueue"
ENQUEUE_MANY_TASK = "healthgate.enqueue_many"
#: Tells the application's callback of the messages that finished (the outbox).
OUTCOMES_TASK = "healthgate.outcomes"

#: A broker-side enqueue retries a database outage this many times, with Celery's
#: exponential backoff (1 s, 2 s, 4 s ... capped at ``ENQUEUE_RETRY_BACKOFF_MAX`` s):
#: about ten minutes in all, longer than a PostgreSQL failover or restart.
ENQUEUE_MAX_RETRIES = 10
ENQUEUE_RETRY_BACKOFF_MAX = 120

#: One queue for everything keeps the embedded default simple; operators can route
#: dispatch to its own queue with Celery's ``task_routes`` without code changes.
DEFAULT_QUEUE = "healthgate"

#: Beat claims due messages this often. Short, because a throttled message's
#: ``not_before`` is only as precise as the tick; the claim itself is one indexed query.
TICK_SECONDS = 2.0

#: Messages handed to one dispatch task. Large enough to amortise the broker round trip
#: and the store transaction, small enough that one slow provider call does not hold many.
DISPATCH_BATCH = 50

#: Messages of an ``enqueue_many`` call stored together. While PostgreSQL writes one
#: part, the following ones are validated and built. Nothing overlaps the first part's
#: reads nor the last part's writes, so smaller parts wait less, but each costs its
#: own statements: at 1,000 messages a call, 125 was the fastest of 84 to 334.
ENQUEUE_PART = 125

#: Messages of an ``enqueue_many`` call committed together. On SQLite a transaction
#: holds the one write lock: a part of 1,000 unrouted messages holds it about 0.3 s on a
#: small machine, so a STOP arriving meanwhile waits that long, far within the busy
#: timeout, where one transaction of 15,000 held it for the whole call. Eight of the
#: ``ENQUEUE_PART`` parts that PostgreSQL pipelines.
ENQUEUE_COMMIT = 1000

#: On SQLite an ``enqueue_many`` call pauses this long between its transactions. SQLite
#: queues no writers: one waiting for the lock polls it, at last every 100 ms, and
#: would miss the moment between two parts and wait for the whole call. A pause as long
#: as the poll lets it in after one part, for a tenth of a second a thousand messages.
SQLITE_WRITER_PAUSE_SECONDS = 0.1

#: Messages claimed by one tick at most, so a huge backlog is fed to workers in slices.
CLAIM_LIMIT = 1000

#: Accepted sends are recorded together, at least this often: one transaction per batch
#: instead of per message, yet a slow provider never leaves many answers unrecorded.
RECORD_SENT_SECONDS = 1.0

#: Claimed but not yet dispatched messages allowed at once; above it a tick claims
#: nothing, which keeps the broker queue (and the work lost to a crash) short.
MAX_IN_FLIGHT = 5000

#: How long a claim holds. A dispatch task that has not finished by then is presumed
#: dead and its messages return to the queue; its fence token no longer matches.
LEASE_SECONDS = 120.0

#: How long a message may stay SENDING (the provider call under way, or its answer not
#: recorded because the worker died) before beat reconciles it. Far longer than any
#: provider call (httpx timeouts are seconds), so a slow call is never raced.
RECONCILE_AFTER_SECONDS = 300.0

#: A tick older than this is useless (the next one is coming), so the broker drops it.
TICK_EXPIRES_SECONDS = 10.0

#: Beat asks the providers for line health this often. The provider scores move over
#: hours and webhooks carry the urgent changes; polling catches what a webhook missed.
POLL_SECONDS = 300.0

#: Finished messages' bodies and webhook bodies are kept this many days, then purged:
#: they hold what people wrote, and the decisions explain a message without them.
#: A month covers a dispute about a send and a person's review of one.
RETENTION_DAYS = 30

#: Beat purges once a day: the period is counted in days.
PURGE_SECONDS = 86_400.0

#: Rows one purge transaction empties at most, so a first purge of years of history
#: never holds the writer lock (SQLite) or many row locks (PostgreSQL) for long.
PURGE_BATCH = 1000

#: Connecting to a provider should be quick; a send or a health read may take longer,
#: but a worker must not hang on one call while its claim's lease runs down.
PROVIDER_CONNECT_TIMEOUT_SECONDS = 5.0
PROVIDER_TIMEOUT_SECONDS = 30.0

#: 360dialog's documented base URL of the WhatsApp Cloud API.
D360_BASE_URL = "https://waba-v2.360dialog.io"

#: SQLite waits this long for the writer lock before failing, which covers a CLI
#: command and a worker writing at the same moment.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

#: File names under the data directory of the embedded default.
SQLITE_FILE = "healthgate.db"
BROKER_DIR = "broker"
BEAT_SCHEDULE_FILE = "celerybeat-schedule"
SEND_LOG_FILE = "sends.jsonl"
#: The API token ``healthgate init`` writes for the embedded default (0600), used when
#: ``HEALTHGATE_API_TOKEN`` is not set.
API_TOKEN_FILE = "api_token"

#: The web process listens on loopback by default: webhooks reach it through a reverse
#: proxy that terminates TLS, and the read-only JSON views are not for the open internet.
WEB_HOST = "127.0.0.1"
WEB_PORT = 8000

#: The ``Host`` names the web process answers by default: its loopback names only, so a
#: page of another site cannot reach it through a DNS name rebound to 127.0.0.1.
WEB_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")

#: Rows a read-only listing returns when the caller names no limit, and at most.
LIST_LIMIT = 100
LIST_LIMIT_MAX = 1000

#: Linq's webhook bodies are a few kilobytes; anything far larger is not one of them and
#: is refused before it is verified or stored.
WEBHOOK_MAX_BYTES = 1_000_000

#: Seconds a webhook answered 503 (the database busy) asks the provider to wait before
#: delivering it again: long enough for a big enqueue's write to end, short for a STOP.
WEBHOOK_RETRY_AFTER_SECONDS = 5

#: Every Redis key of the limiter starts with this, so a shared Redis (or the broker's
#: database) can hold healthgate's counters next to other data and be cleaned by prefix.
LIMITS_KEY_PREFIX = "healthgate:limits:"

#: A send stays in Redis this long after it happened: the longest cap window (a day).
#: Each key expires when its own window has passed, so idle lines leave nothing behind.
LIMITS_DAY_SECONDS = 86_400

#: A worker not seen for this many ticks is shown stale: idle, or gone. Workers record
#: themselves at most once a tick, and only while they run tasks, so one tick late is
#: normal; five is not.
WORKER_STALE_TICKS = 5

#: The name of the row holding the policy last applied to held messages.
POLICY_APPLIED = "applied"

#: The queue an outcome's callback task is sent to unless ``HEALTHGATE_OUTCOME_QUEUE``
#: names another: Celery's own default, which an application's worker consumes.
OUTCOME_QUEUE = "celery"

#: Outcomes one delivery run claims at a time; it claims again while any are due and
#: its time lasts (``OUTCOME_RUN_SECONDS``).
OUTCOME_BATCH = 200

#: How long a delivery task holds the outcomes it claimed. Its run stops trying after
#: half of it (``OUTCOME_RUN_SECONDS``), so a slow callback never lets another task claim
#: what this one is still delivering.
OUTCOME_LEASE_SECONDS = 60.0
OUTCOME_RUN_SECONDS = 30.0

#: A failed delivery is tried again after 5 s, then 10 s, 20 s ... doubling up to an
#: hour between attempts; after three days undelivered the outcome is given up on
#: (Standard Webhooks' senders retry for about as long), and ``status`` says so.
OUTCOME_RETRY_FIRST_SECONDS = 5.0
OUTCOME_RETRY_MAX_SECONDS = 3600.0
OUTCOME_GIVE_UP_SECONDS = 3 * 24 * 3600.0

#: A webhook out is answered within this, all of it (connecting, sending, the answer's
#: status), or counts as failed and is tried again: a receiver that trickles its answer
#: holds a worker no longer. The answer's body is never read.
OUTCOME_WEBHOOK_TIMEOUT_SECONDS = 10.0

#: A delivery task is stopped by its worker after this (prefork pool), whatever it is
#: doing: longer than a run and one more call, shorter than its lease.
OUTCOME_TASK_TIME_LIMIT_SECONDS = 50

#: A callback no worker has delivered to for this long no longer counts as listening:
#: then, and only then, outcomes nobody takes are discarded.
OUTCOME_LISTENER_STALE_SECONDS = 86_400.0
