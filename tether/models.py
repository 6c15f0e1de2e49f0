"""The one table tether owns: payloads too big for a PostgreSQL NOTIFY.

Used only by ``tether.backends.postgres``: a message over NOTIFY's 8000-byte
limit is stored here and the notification carries its id. Rows are pruned
after ``OPTIONS["payload_ttl"]`` seconds. Other backends never touch it.
"""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

__all__ = ["Payload"]


class Payload(models.Model):
    channel = models.CharField(max_length=63)
    data = models.BinaryField()  # tether.backends.base.encode_payload(frame)
    created = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        db_table = "tether_payload"

    def __str__(self) -> str:
        return f"payload {self.pk} for {self.channel}"
