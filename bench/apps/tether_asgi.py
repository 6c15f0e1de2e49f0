"""ASGI entry for the tether app: the two lines tether's README puts in ``asgi.py``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apps.settings")
os.environ.setdefault("BENCH_APP", "tether")

from tether.asgi import get_asgi_application

application = get_asgi_application()
