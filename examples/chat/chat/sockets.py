"""The chat's realtime endpoint: one ``tether.v1`` socket per page, whatever rooms the page shows.

The page (``chat.js`` on ``tether.js``) subscribes over that one socket to:

- ``chat.room.<slug>`` for each room it shows: the room's messages (see ``Message.as_json``). The
  group keeps a history (``TETHER["GROUPS"]`` in chatsite/settings.py), so a page that reconnects
  gets what it missed; when the history can't tell (``recovered: false``: a server restart on the
  memory backend), the page reloads the room from the database (``views.room_messages``);
- ``chat.announcements``: the announce form's lines, shown in every room (history too);
- ``chat.online``: nothing is sent to it; its presence is the "who's online" list;
- the user's own ``user_group``: ``{"type": "mention", "user", "room", "text"}`` when someone
  writes ``@username`` in any room.

The page publishes ``{"text": "...", "nonce": "..."}`` to a room. ``prepare_publish`` checks it,
stores it as a ``Message`` stamped with the author the server knows, tells the users it mentions, and
returns what the room's subscribers get. Anything else is refused with an error reply. The optional
``nonce`` (the page's own id for the line) makes sending again safe: a publish whose reply was lost
to a dropped connection may have been stored, and maybe not broadcast (the server stopped in
between); sent again with the same nonce, the stored message is broadcast again rather than stored
twice, and pages show each message id once.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model

from tether import broadcast, login_required, user_group
from tether.realtime import ErrorCode, ProtocolError, RealtimeView

from .models import Message

ROOM_PREFIX = "chat.room."
ANNOUNCEMENTS = "chat.announcements"  # every page subscribes: "announce to all rooms"
ONLINE = "chat.online"  # presence only: who has a chat page open
MAX_LENGTH = 2000
MENTION = re.compile(r"(?<![\w@])@([\w.+-]+)")  # "@bob", not "x@bob" (an e-mail address)
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,50}")  # a room's name: Django's slug, as in the URLs and Message.room


def room_group(room: str) -> str:
    """The group of room ``room`` (a slug)."""
    return f"{ROOM_PREFIX}{room}"


def room_of(group: str) -> str | None:
    """The room (slug) whose group is ``group``, or None for any other group."""
    room = group.removeprefix(ROOM_PREFIX)
    return room if room != group and SLUG.fullmatch(room) else None


@login_required  # anonymous: accepted, then closed with 4401 (tether.js stops and says why)
class ChatRealtime(RealtimeView):
    def can_subscribe(self, user: Any, group: str) -> bool:
        """Any signed-in user may read any room, the announcements and the online list."""
        return group in (ANNOUNCEMENTS, ONLINE) or room_of(group) is not None

    def can_publish(self, user: Any, group: str, data: Any) -> bool:
        """Only rooms take messages (announcements come from the announce form, a sync view)."""
        return room_of(group) is not None

    def presence_info(self) -> Any:
        """What the online list shows of each connection."""
        return {"name": self.user.get_username()}

    async def prepare_publish(self, group: str, data: Any) -> Any:
        """Store ``{"text": "..."}`` as a message by this socket's user; broadcast the stored message."""
        room = room_of(group)
        text = data.get("text") if isinstance(data, dict) else None
        if room is None or not isinstance(text, str) or not text.strip():
            raise ProtocolError(ErrorCode.BAD_REQUEST, 'send {"text": "..."} with some text')
        if len(text) > MAX_LENGTH:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"a message holds at most {MAX_LENGTH} characters")
        nonce = data.get("nonce", "")
        if not isinstance(nonce, str) or len(nonce) > 64:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "nonce is a string of at most 64 characters")
        if not nonce:
            message = await Message.objects.acreate(room=room, user=self.user, text=text.strip())
        else:
            # Sent again after a dropped connection: the first attempt may have been stored (and not
            # broadcast: the server stopped in between). Broadcast the stored one again; pages show
            # each id once.
            message, created = await Message.objects.aget_or_create(
                user=self.user, nonce=nonce, defaults={"room": room, "text": text.strip()}
            )
            message.user = self.user
            if message.room != room:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "this nonce was used for a message in another room")
            if not created:
                return message.as_json()
        await self.notify_mentioned(message)
        return message.as_json()

    async def notify_mentioned(self, message: Message) -> None:
        """Tell each user named as ``@username`` in ``message``, on all their pages."""
        names = set(MENTION.findall(message.text)) - {self.user.get_username()}
        if not names:
            return
        users = get_user_model().objects.filter(username__in=names).values_list("pk", flat=True)
        notice = {"type": "mention", "user": self.user.get_username(), "room": message.room, "text": message.text}
        async for pk in users:
            await broadcast(user_group(pk), notice)
