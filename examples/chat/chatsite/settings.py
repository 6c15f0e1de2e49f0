"""Settings for the chat example.

Embedded defaults: SQLite next to this file and tether's in-memory backend, so
``scripts/demo.sh`` needs no service. One environment variable each switches:

- ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat``: PostgreSQL (needs ``psycopg``);
  ``sqlite:////abs/path.sqlite3`` picks another SQLite file;
- ``TETHER_BACKEND=redis``: Redis at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``, its
  keys prefixed with ``REDIS_PREFIX``, default ``tether:``), needed as soon as more than one
  server process runs; ``TETHER_BACKEND=postgres`` uses LISTEN/NOTIFY on the ``default`` database
  (which must then be PostgreSQL).

The groups the chat uses are in ``TETHER["GROUPS"]`` (see chat/sockets.py): rooms and announcements
keep a history, so a page that reconnects gets what it missed (across a server restart on Redis or
PostgreSQL; the memory backend's history dies with the process, and the page then reloads the rooms
from the database), and ``chat.online`` has presence.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "chat-example-only-not-secret")
DEBUG = os.environ.get("DEBUG", "1") == "1"  # a demo: static files served by Django; see docs/deployment.md
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # behind nginx: wss:// links on https pages

INSTALLED_APPS = [
    "tether",  # first, so its runserver serves WebSockets too
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str) -> dict[str, Any]:
    """``DATABASES["default"]`` from ``sqlite:///relative.sqlite3``, ``sqlite:////abs.sqlite3``
    or ``postgres://user:password@host:port/name``. Raises ValueError on any other scheme.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / unquote(parts.path[1:])}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "chat",
            "USER": unquote(parts.username or "postgres"),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite:/// or postgres://)")


DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}

_BACKENDS = {
    "memory": {"BACKEND": "tether.backends.memory.MemoryBackend"},
    "redis": {
        "BACKEND": "tether.backends.redis.RedisBackend",
        "OPTIONS": {
            "url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "prefix": os.environ.get("REDIS_PREFIX", "tether:"),
        },
    },
    "postgres": {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "default"}},
}
_backend = os.environ.get("TETHER_BACKEND", "memory")
if _backend not in _BACKENDS:
    raise ValueError(f"TETHER_BACKEND={_backend!r}: choose one of {', '.join(_BACKENDS)}")
TETHER = {
    **_BACKENDS[_backend],
    "GROUPS": {
        "chat.room.*": {"history": 500, "history_ttl": 7 * 24 * 3600},
        "chat.announcements": {"history": 100, "history_ttl": 7 * 24 * 3600},
        "chat.online": {"presence": True},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("STATIC_ROOT") or None  # `manage.py collectstatic` target in a deployment
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"tether": {"handlers": ["console"], "level": "INFO"}},
}
