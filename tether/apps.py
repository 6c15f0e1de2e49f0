from django.apps import AppConfig

from . import checks  # noqa: F401  (importing registers the system checks)


class TetherConfig(AppConfig):
    name = "tether"
    verbose_name = "Tether (WebSockets)"
    default_auto_field = "django.db.models.BigAutoField"
