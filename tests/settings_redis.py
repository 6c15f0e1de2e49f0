"""The test settings with the Redis backend (for real-server tests); TETHER_TEST_SETTINGS adds to it."""

from tests.settings import *  # noqa: F403
from tests.settings import TETHER as _FROM_ENV

TETHER = {
    "BACKEND": "tether.backends.redis.RedisBackend",
    "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-test:"},
    **_FROM_ENV,
}
