"""``{% websocket_url "chat" room="lobby" %}``: the absolute ws:// or wss:// URL of a route."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

register = template.Library()


@register.simple_tag(takes_context=True)
def websocket_url(context: template.Context, viewname: str, *args: Any, **kwargs: Any) -> str:
    """``wss://`` when the page came over HTTPS, ``ws://`` otherwise; host from the request.

    Without a ``request`` in the context it gives the path alone.
    """
    request = context.get("request")
    current_app = None
    if request is not None and getattr(request, "resolver_match", None) is not None:
        current_app = getattr(request, "current_app", None) or request.resolver_match.namespace
    path = reverse(viewname, args=args or None, kwargs=kwargs or None, current_app=current_app)
    if request is None:
        return path
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"
