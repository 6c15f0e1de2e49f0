"""The chat's ASGI entry point: ``uvicorn chatsite.asgi:application --ws websockets-sansio``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from tether.asgi import get_asgi_application

application = get_asgi_application()  # http -> Django, websocket -> tether, lifespan -> tether
