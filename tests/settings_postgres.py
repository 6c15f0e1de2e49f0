"""The test settings with the PostgreSQL backend on the "pg" database (for real-server tests); TETHER_TEST_SETTINGS adds to it."""

from tests.settings import *  # noqa: F403
from tests.settings import TETHER as _FROM_ENV

TETHER = {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}, **_FROM_ENV}
