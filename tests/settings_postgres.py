"""The test settings with the PostgreSQL backend on the "pg" database (for real-server tests)."""

from tests.settings import *  # noqa: F403

TETHER = {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}}
