import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from tether.asgi import get_asgi_application

application = get_asgi_application()
