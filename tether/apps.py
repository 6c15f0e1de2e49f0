from django.apps import AppConfig

from . import checks  # importing registers the system checks
from .revocation import connect_signals


class TetherConfig(AppConfig):
    name = "tether"
    verbose_name = "Tether (WebSockets)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connect_signals()  # sockets closed when the login behind them ends (tether.revocation)
        checks.log_server_limits()  # under uvicorn's command line no check command runs: log W020-W022
