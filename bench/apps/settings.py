"""Django settings shared by the three benchmark apps; the environment picks the variant.

BENCH_APP      raw | channels | tether (which extra app goes into INSTALLED_APPS)
BENCH_BACKEND  memory | redis | pubsub | postgres (channel layer / tether backend / raw broker);
               "+history" (tether only: "redis+history") gives the group a history of 1000 messages
BENCH_DB       the SQLite file holding sessions and users (bench/run.py creates it)
BENCH_SESSIONS where the authenticated handshake's session and user live: sqlite (default: the db
               session engine on SQLite), postgres (the db engine on PostgreSQL, database
               BENCH_PG_DB), cached_db (sessions in the local-memory cache over SQLite)
BENCH_LOGIN_CACHE  seconds of tether's TETHER["LOGIN_CACHE"] (default: tether's own); 0 turns it
               off, as a Redis or PostgreSQL backend does
"""

import os
from pathlib import Path

APP = os.environ.get("BENCH_APP", "tether")
BACKEND, _, _VARIANT = os.environ.get("BENCH_BACKEND", "memory").partition("+")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
GROUP = "bench"

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
if APP == "channels":
    INSTALLED_APPS = ["daphne", "channels", *INSTALLED_APPS]  # as the Channels tutorial lists them
elif APP == "tether":
    INSTALLED_APPS = ["tether", *INSTALLED_APPS]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "bench.apps.tether_app" if APP == "tether" else "bench.apps.settings"
urlpatterns: list[object] = []  # raw and channels route websockets themselves
USE_TZ = True
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB", str(Path(__file__).resolve().parent.parent / ".data" / "bench.sqlite3")),
    }
}
SESSIONS = os.environ.get("BENCH_SESSIONS", "sqlite")
if SESSIONS == "cached_db":
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
if BACKEND == "postgres" or SESSIONS == "postgres":
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_PG_DB", "test"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }

# Channels: the InMemory layer in one process, channels-redis across processes. The capacity is
# raised from its default (100) so that a burst of M messages is queued, not dropped.
_CAPACITY = 100_000
CHANNEL_LAYERS = {
    "memory": {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": _CAPACITY}}},
    "redis": {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": _CAPACITY},
        }
    },
    "pubsub": {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    },
}.get(BACKEND, {})

TETHER = {
    "memory": {"BACKEND": "tether.backends.memory.MemoryBackend"},
    "redis": {"BACKEND": "tether.backends.redis.RedisBackend", "OPTIONS": {"url": REDIS_URL}},
    "postgres": {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "default"}},
}.get(BACKEND, {})
if _VARIANT == "history":  # the cost of history: every message stored with its position (docs/delivery.md)
    TETHER["GROUPS"] = {GROUP: {"history": 1000}}
if os.environ.get("BENCH_LOGIN_CACHE"):
    TETHER = {**TETHER, "LOGIN_CACHE": float(os.environ["BENCH_LOGIN_CACHE"]) or None}

if os.environ.get("BENCH_TRACEMALLOC"):  # bench/run.py --memtrace: where memory per connection goes
    from bench.apps.memtrace import install

    install()
