"""The test settings with the Redis backend (for real-server tests)."""

from tests.settings import *  # noqa: F403

TETHER = {
    "BACKEND": "tether.backends.redis.RedisBackend",
    "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-test:"},
}
