"""ASGI type aliases, kept loose on purpose: servers send more keys than the spec's TypedDicts allow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Frame = str | bytes
"""An encoded message as it goes on the wire: ``str`` for a text frame, ``bytes`` for a binary one."""

User = Union["AbstractBaseUser", "AnonymousUser"]
