from django.apps import AppConfig

from . import checks  # importing registers the system checks


class TetherConfig(AppConfig):
    name = "tether"
    verbose_name = "Tether (WebSockets)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.log_server_limits()  # under uvicorn's command line no check command runs: log W020-W022
