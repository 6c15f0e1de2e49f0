"""The tables tether owns, all used only by ``tether.backends.postgres``.

- ``tether_payload``: a message over NOTIFY's 8000-byte limit is stored here
  and the notification carries its id; rows are pruned after
  ``OPTIONS["payload_ttl"]`` seconds.
- ``tether_stream`` and ``tether_history``: the history of groups matching
  ``TETHER["GROUPS"]``: one row per group with its epoch and newest offset
  (locked while a message is appended, which is what makes offsets gap-free),
  and one row per kept message.
- ``tether_presence`` and ``tether_presence_process``: presence entries (one
  per group and connection, owned by a process) and each process's deadline,
  pushed forward by its heartbeat (``tether.presence``).

Other backends never touch them.
"""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

__all__ = ["HistoryEntry", "Payload", "PresenceEntry", "PresenceProcess", "Stream"]


class Payload(models.Model):
    channel = models.CharField(max_length=63)
    data = models.BinaryField()  # tether.backends.base.encode_payload(frame)
    created = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        db_table = "tether_payload"

    def __str__(self) -> str:
        return f"payload {self.pk} for {self.channel}"


class Stream(models.Model):
    """One group's stream: its epoch and the offset of its newest message."""

    group_name = models.CharField(max_length=200, primary_key=True)
    epoch = models.CharField(max_length=32)
    top = models.BigIntegerField()

    class Meta:
        db_table = "tether_stream"

    def __str__(self) -> str:
        return f"stream {self.group_name} at {self.top} ({self.epoch})"


class HistoryEntry(models.Model):
    """One kept message of a group with history, at offset ``seq`` of epoch ``epoch``."""

    pk = models.CompositePrimaryKey("group_name", "seq")
    group_name = models.CharField(max_length=200)
    seq = models.BigIntegerField()
    epoch = models.CharField(max_length=32)
    data = models.BinaryField()  # tether.backends.base.encode_payload(frame)
    created = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "tether_history"

    def __str__(self) -> str:
        return f"message {self.seq} of {self.group_name}"


class PresenceProcess(models.Model):
    """A process with presence entries, alive while ``deadline`` is in the future."""

    process = models.CharField(max_length=64, primary_key=True)
    deadline = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "tether_presence_process"

    def __str__(self) -> str:
        return f"process {self.process} until {self.deadline}"


class PresenceEntry(models.Model):
    """One connection in a group with presence: its member JSON, its user and the process that owns it."""

    pk = models.CompositePrimaryKey("group_name", "connection")
    group_name = models.CharField(max_length=220)
    connection = models.CharField(max_length=64)
    process = models.CharField(max_length=64, db_index=True)
    user_id = models.TextField(null=True)
    member = models.TextField()

    class Meta:
        db_table = "tether_presence"

    def __str__(self) -> str:
        return f"connection {self.connection} in {self.group_name}"
