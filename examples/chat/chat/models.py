from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

HISTORY = 50  # messages (and announcements) a page shows when it opens a room


class Message(models.Model):
    """One chat message or announcement, kept so a page opening a room sees the recent past.

    Pages order a room's lines by ``id``: the order they were stored in, which is the order the
    room's subscribers got them.

    An announcement (``kind="announcement"``, from the announce form) belongs to every room;
    its ``room`` is empty.
    """

    class Kind(models.TextChoices):
        MESSAGE = "message"
        ANNOUNCEMENT = "announcement"

    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.MESSAGE)
    room = models.SlugField(max_length=50, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages")
    text = models.TextField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True)
    # The page's own id for a message it sends: sent again after a dropped connection, it finds the
    # stored message instead of storing a second one.
    nonce = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["room", "-created"], name="chat_room_recent")]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "nonce"], condition=~models.Q(nonce=""), name="chat_message_user_nonce"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.room} {self.user}: {self.text[:40]}"

    def as_json(self) -> dict[str, Any]:
        """What the room's subscribers (or, for an announcement, every page) get; ``user`` must be loaded."""
        return {
            "type": self.kind,
            "id": self.pk,
            "room": self.room,
            "user": self.user.get_username(),
            "text": self.text,
            "created": self.created,
        }

    @classmethod
    def recent(cls, room: str, count: int = HISTORY) -> list[Message]:
        """The last ``count`` messages of ``room`` and announcements, oldest first."""
        shown = models.Q(kind=cls.Kind.MESSAGE, room=room) | models.Q(kind=cls.Kind.ANNOUNCEMENT)
        query = cls.objects.filter(shown).select_related("user").order_by("-id")[:count]
        return list(query)[::-1]
