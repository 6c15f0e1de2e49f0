"""WebSocket routes in the ordinary Django URLconf.

``websocket()`` returns a real ``URLPattern`` (built by ``django.urls.path``), so
``include()``, namespaces and ``reverse()`` work unchanged. Its view answers
plain HTTP with 426 Upgrade Required; the tether router recognises the
pattern by the handler the view carries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, re_path

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["Handler", "get_handler", "re_websocket", "websocket"]

Handler = Callable[["WebSocket"], Awaitable[None]]

_UPGRADE_HINT = (
    "426 Upgrade Required: this URL is a WebSocket endpoint; connect with a WebSocket client "
    "(ws:// or wss://).\n"
    "If a WebSocket client got this answer, its handshake reached Django as a plain HTTP request, "
    "for one of two reasons:\n"
    "- a proxy in front of the server dropped the Upgrade and Connection headers (nginx: "
    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    'proxy_set_header Connection "upgrade";), or\n'
    "- the server can't speak WebSocket: uvicorn without a WebSocket library (fix: "
    "pip install 'uvicorn[standard]'), or a WSGI server such as Django's own runserver "
    "(serve the project with an ASGI server: tether's runserver does once uvicorn[standard] is installed).\n"
)


def _upgrade_required_view(handler: Handler) -> Callable[..., HttpResponse]:
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = HttpResponse(_UPGRADE_HINT, status=426, content_type="text/plain; charset=utf-8")
        if isinstance(request, ASGIRequest):  # WSGI forbids hop-by-hop headers (wsgiref asserts on them)
            response["Upgrade"] = "websocket"
            response["Connection"] = "Upgrade"
        return response

    view.tether_handler = handler  # type: ignore[attr-defined]
    view.__name__ = getattr(handler, "__name__", "websocket_route")
    view.__qualname__ = getattr(handler, "__qualname__", view.__name__)
    view.__module__ = getattr(handler, "__module__", __name__)
    return view


def _check_handler(handler: Handler) -> None:
    if not callable(handler):
        raise TypeError(f"websocket() needs an async handler, got {handler!r}")
    if isinstance(handler, type):
        raise TypeError(f"websocket() got the class {handler.__name__}; pass {handler.__name__}.as_handler()")


def websocket(
    route: str, handler: Handler, kwargs: dict[str, Any] | None = None, name: str | None = None
) -> URLPattern:
    """A WebSocket route, written like ``django.urls.path()``.

    ``handler`` is an async callable taking a ``WebSocket``: a function or
    ``SomeSocketView.as_handler()``.
    """
    _check_handler(handler)
    pattern = path(route, _upgrade_required_view(handler), kwargs, name)
    assert isinstance(pattern, URLPattern)
    return pattern


def re_websocket(
    route: str, handler: Handler, kwargs: dict[str, Any] | None = None, name: str | None = None
) -> URLPattern:
    """A WebSocket route with a regular expression, like ``django.urls.re_path()``."""
    _check_handler(handler)
    pattern = re_path(route, _upgrade_required_view(handler), kwargs, name)
    assert isinstance(pattern, URLPattern)
    return pattern


def get_handler(view: Callable[..., Any]) -> Handler | None:
    """The WebSocket handler behind a resolved view, or None for an HTTP view."""
    return getattr(view, "tether_handler", None)
