from django.apps import AppConfig


class TetherConfig(AppConfig):
    name = "tether"
    verbose_name = "Tether (WebSockets)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
