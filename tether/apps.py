from django.apps import AppConfig


class TetherConfig(AppConfig):
    name = "tether"
    verbose_name = "Tether (WebSockets)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # registers the system checks

        checks.log_server_limits()  # under uvicorn's command line, no check command runs: log W012-W014
