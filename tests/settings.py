"""Settings for tether's own test suite (SQLite by default; PostgreSQL as the "pg" alias)."""

import json
import os
import socket
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = json.loads(os.environ.get("TETHER_TEST_ALLOWED_HOSTS", '["testserver", "localhost", "127.0.0.1"]'))
CSRF_TRUSTED_ORIGINS = json.loads(os.environ.get("TETHER_TEST_CSRF_TRUSTED_ORIGINS", "[]"))
INSTALLED_APPS = [
    "tether",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
USE_TZ = True


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


PG_HOST = os.environ.get("TETHER_TEST_PG_HOST", "127.0.0.1")
PG_AVAILABLE = os.environ.get("CI") == "true" or _reachable(PG_HOST, 5432)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TETHER_TEST_SQLITE", str(BASE_DIR / "test.sqlite3")),
        "TEST": {"NAME": os.environ.get("TETHER_TEST_SQLITE_TEST", str(BASE_DIR / "test_db.sqlite3"))},
    },
}
if PG_AVAILABLE:
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": PG_HOST,
        "PORT": os.environ.get("TETHER_TEST_PG_PORT", "5432"),
        "TEST": {"NAME": f"tether_test_{os.getpid()}"},
    }
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"tether": {"handlers": ["console"], "level": "INFO"}},
}

# Real-server tests pass TETHER settings to the server process as JSON.
TETHER = json.loads(os.environ.get("TETHER_TEST_SETTINGS", "{}"))
