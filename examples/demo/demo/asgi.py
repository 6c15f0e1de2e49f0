import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

from tether.asgi import get_asgi_application

application = get_asgi_application()  # http -> Django, websocket -> tether, lifespan -> tether
