"""The chat's WebSocket handler: one socket per open room page.

Frames the client receives (all JSON objects with a ``type``):

- ``history``: ``{"messages": [...]}``, the room's last 50 messages and announcements, once after
  connecting;
- ``message``: a new message in the room (see ``Message.as_json``);
- ``announcement``: the same fields, from the announce form, to every room;
- ``mention``: ``{"user", "room", "text"}``, to the mentioned user's sockets in every room;
- ``error``: ``{"error"}``, when the client sent something the chat can't take.

The client sends ``{"text": "..."}``.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model

from tether import SocketView, broadcast, login_required, user_group

from .models import Message

ANNOUNCEMENTS = "chat.announcements"  # every chat socket is in it: "announce to all rooms"
MAX_LENGTH = 2000
MENTION = re.compile(r"(?<![\w@])@([\w.+-]+)")  # "@bob", not "x@bob" (an e-mail address)


def room_group(room: str) -> str:
    """The group of the sockets open on room ``room`` (a slug)."""
    return f"chat.room.{room}"


@login_required  # anonymous handshakes are refused before accept()
class ChatSocket(SocketView):
    async def connect(self) -> None:
        self.room = self.kwargs["room"]
        await self.accept()
        # Join before reading the history: a message sent in between arrives twice, never
        # zero times, and the page drops the duplicate by id.
        await self.join(room_group(self.room))
        await self.join(ANNOUNCEMENTS)
        history = await Message.arecent(self.room)
        await self.send_json({"type": "history", "room": self.room, "messages": [m.as_json() for m in history]})

    async def receive_json(self, data: Any) -> None:
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            await self.send_json({"type": "error", "error": 'send {"text": "..."} with some text'})
            return
        if len(text) > MAX_LENGTH:
            await self.send_json({"type": "error", "error": f"a message holds at most {MAX_LENGTH} characters"})
            return
        message = await Message.objects.acreate(room=self.room, user=self.user, text=text.strip())
        await self.broadcast(room_group(self.room), message.as_json())
        await self.notify_mentioned(message)

    async def notify_mentioned(self, message: Message) -> None:
        """Tell each user named as ``@username`` in ``message``, on all their sockets."""
        names = set(MENTION.findall(message.text)) - {self.user.get_username()}
        if not names:
            return
        users = get_user_model().objects.filter(username__in=names).values_list("pk", flat=True)
        notice = {"type": "mention", "user": self.user.get_username(), "room": self.room, "text": message.text}
        async for pk in users:
            await broadcast(user_group(pk), notice)
