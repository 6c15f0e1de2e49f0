"""The chat's ASGI entry point: ``uvicorn chatsite.asgi:application --ws websockets-sansio``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from tether.asgi import get_asgi_application

application = get_asgi_application()  # http -> Django, websocket -> tether, lifespan -> tether
if settings.DEBUG:
    # A demo serves its own static files; in a deployment nginx serves STATIC_ROOT. Django's
    # ASGI handler for them reads files off the event loop (its serve() view under ASGI would
    # warn "StreamingHttpResponse must consume synchronous iterators" on every file).
    application = ASGIStaticFilesHandler(application)
