from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

HISTORY = 50  # messages a socket gets when it joins a room


class Message(models.Model):
    """One chat message, kept so a socket joining a room sees the recent past."""

    room = models.SlugField(max_length=50)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages")
    text = models.TextField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["room", "-created"], name="chat_room_recent")]

    def __str__(self) -> str:
        return f"#{self.room} {self.user}: {self.text[:40]}"

    def as_json(self) -> dict[str, Any]:
        """The frame every socket in the room receives (``user`` must be loaded)."""
        return {
            "type": "message",
            "id": self.pk,
            "room": self.room,
            "user": self.user.get_username(),
            "text": self.text,
            "created": self.created,
        }

    @classmethod
    async def arecent(cls, room: str, count: int = HISTORY) -> list[Message]:
        """The last ``count`` messages of ``room``, oldest first."""
        query = cls.objects.filter(room=room).select_related("user").order_by("-created", "-id")[:count]
        return [message async for message in query][::-1]
