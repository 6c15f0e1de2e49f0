"""Django's ``get_user(request)`` with the session and the user read by SQL compiled once.

Through the ORM, loading a session row costs about 330 us and a user row about 250 us, of which
the SQL itself is 23-30 us: the rest is building the queryset and compiling it, again at every
handshake. ``get_user`` here does what ``django.contrib.auth.get_user`` does, step by step, but
where the setup is Django's own it runs each ``get()`` as SQL compiled once per (database alias,
model) and builds the instance with ``Model.from_db`` from the row, through the compiler's
converters, as the ORM does. Where the setup is Django's own:

- the session: ``SESSION_ENGINE`` is ``django.contrib.sessions.backends.db`` or ``cached_db``
  (their ``SessionStore`` exactly, with Django's ``_get_session_from_db``, so Django's ``Session``
  model). Django's own ``load()`` runs: cached_db reads the cache first and fills it on a miss, the
  data go through ``SessionStore.decode`` (corrupt data: an empty session); only the row read
  (``expire_date > timezone.now()``; none: the session key is dropped) is the compiled query.
- the user: the session's backend is in ``AUTHENTICATION_BACKENDS`` and is
  ``django.contrib.auth.backends.ModelBackend`` exactly (not a subclass, ``get_user`` not replaced),
  for the configured user model, whose default manager is a plain ``Manager`` of a plain
  ``QuerySet`` (no ``get_queryset`` of its own). ``user_can_authenticate`` (``is_active``) applies.
- the session auth hash: a match with the current ``SECRET_KEY`` (``constant_time_compare``) is
  the user. Any other outcome (no hash, a mismatch: flush; a match with one of
  ``SECRET_KEY_FALLBACKS``: Django 5.2 and 6.0 cycle the session key and store the current hash) is
  left to Django's ``get_user`` itself, on the session already loaded, so its side effects are
  Django's, in whatever version is installed.

Everything else (other engines, backends, user models or managers, a query the compiler builds
in a way this module does not expect) goes to Django's ``get_user`` / ``QuerySet.get`` unchanged.
The compiled SQL is dropped when ``DATABASES``, ``SESSION_ENGINE``, ``AUTH_USER_MODEL`` or
``AUTHENTICATION_BACKENDS`` change (``setting_changed``, as tests do). Sync code: call it where
Django's ORM may run (``sync_to_async``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth import get_user as django_get_user
from django.contrib.sessions.backends import cached_db, db
from django.core.exceptions import SuspiciousOperation
from django.core.signals import setting_changed
from django.db import connections
from django.db.models import Field, Model, QuerySet
from django.db.models.manager import BaseManager
from django.db.models.query import MAX_GET_RESULTS
from django.utils import timezone
from django.utils.crypto import constant_time_compare

__all__ = ["forget_compiled", "get_user"]

_STOCK_STORES = (db.SessionStore, cached_db.SessionStore)
_MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _is_django(function: Any, module: str, qualname: str) -> bool:
    """Whether ``function`` is Django's own (not replaced by a subclass or a patch)."""
    return getattr(function, "__module__", None) == module and getattr(function, "__qualname__", None) == qualname


def get_user(request: Any) -> Any:
    """``django.contrib.auth.get_user(request)``, the same result and the same effects on
    ``request.session``; only ``request.session`` is read."""
    store = request.session
    if type(store) not in _STOCK_STORES or not _is_django(
        type(store)._get_session_from_db, "django.contrib.sessions.backends.db", "SessionStore._get_session_from_db"
    ):
        return django_get_user(request)
    _load(store)
    return _user_of(request, store)


def _load(store: Any) -> None:
    """Load ``store`` as its first read would (``SessionBase._get_session``): Django's ``load()``,
    with the row read by ``_session_row`` in place of ``_get_session_from_db``."""
    if "_session_cache" in store.__dict__:
        return
    store.__dict__["_get_session_from_db"] = lambda: _session_row(store)  # this instance, this call only
    try:
        store._get_session()
    finally:
        del store.__dict__["_get_session_from_db"]


def _session_row(store: Any) -> Any:
    """``SessionStore._get_session_from_db()`` (Django 5.2, 6.0), by the compiled query."""
    model = store.model
    try:
        return _get(model, model.objects, (("session_key", store.session_key), ("expire_date__gt", timezone.now())))
    except (model.DoesNotExist, SuspiciousOperation) as e:
        if isinstance(e, SuspiciousOperation):
            logger = logging.getLogger(f"django.security.{e.__class__.__name__}")
            logger.warning(str(e))
        store._session_key = None
        return None


def _user_of(request: Any, store: Any) -> Any:
    """The rest of ``django.contrib.auth.get_user`` on a loaded session."""
    from django.contrib.auth import backends  # its import reads the user model: needs the app registry
    from django.contrib.auth.models import AnonymousUser

    model: Any = get_user_model()
    try:
        user_id = model._meta.pk.to_python(store[SESSION_KEY])  # as _get_user_session_key()
        backend_path = store[BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser()
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    backend = load_backend(backend_path)
    if (
        type(backend) is not backends.ModelBackend
        or not _is_django(type(backend).get_user, "django.contrib.auth.backends", "ModelBackend.get_user")
        or cast(Any, backends.UserModel) is not model
    ):
        return django_get_user(request)
    try:
        user = _get(model, model._default_manager, (("pk", user_id),))  # ModelBackend.get_user()
    except model.DoesNotExist:
        user = None
    else:
        user = user if backend.user_can_authenticate(user) else None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = store.get(HASH_SESSION_KEY)
        if not session_hash or not constant_time_compare(session_hash, user.get_session_auth_hash()):
            # Not verified by the current key: Django decides (the flush; or, when a key of
            # SECRET_KEY_FALLBACKS verifies it, the new session key and hash), on this loaded session.
            return django_get_user(request)
    return user or AnonymousUser()


# -- QuerySet.get() by SQL compiled once per (alias, model, lookups) -----------------------------


class _Query(NamedTuple):
    """A ``get()`` compiled for one database connection: its SQL, where the lookup values go in
    its parameters, and how rows become instances (as ``ModelIterable`` does)."""

    connection: Any
    sql: str
    params: tuple[Any, ...]
    slots: tuple[int, ...]
    fields: tuple[Field[Any, Any], ...]
    converters: list[tuple[int, tuple[list[Any], Any]]]
    col_count: int
    init_list: list[str]
    start: int
    end: int


_compiled: dict[tuple[str, type[Model], tuple[str, ...]], _Query | None] = {}
_compiled_lock = threading.Lock()
_UNCOMPILED: Any = object()


def forget_compiled(**kwargs: Any) -> None:
    """Drop every compiled query (they are compiled again at their next use)."""
    with _compiled_lock:
        _compiled.clear()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("DATABASES", "SESSION_ENGINE", "AUTH_USER_MODEL", "AUTHENTICATION_BACKENDS"):
        forget_compiled()


setting_changed.connect(_settings_changed)


def _plain_manager(manager: Any) -> bool:
    return (
        type(manager).get_queryset is BaseManager.get_queryset
        and getattr(manager, "_queryset_class", None) is QuerySet
        and not getattr(manager, "_hints", None)
    )


def _db_value(field: Field[Any, Any], value: Any, connection: Any) -> Any:
    """The parameter a lookup on ``field`` sends for ``value`` (``Lookup.get_prep_lookup`` then
    ``FieldGetDbPrepValueMixin.get_db_prep_lookup``)."""
    return field.get_db_prep_value(field.get_prep_value(value), connection, prepared=True)


def _get(model: type[Model], manager: Any, lookups: Sequence[tuple[str, Any]]) -> Any:
    """``manager.get(**dict(lookups))``: the instance, or ``model.DoesNotExist`` /
    ``MultipleObjectsReturned`` raised as ``QuerySet.get`` raises them."""
    if not _plain_manager(manager):
        return manager.get(**dict(lookups))
    alias = manager.db
    connection = connections[alias]
    key = (alias, model, tuple(name for name, _ in lookups))
    query = _compiled.get(key, _UNCOMPILED)
    if query is _UNCOMPILED or (query is not None and query.connection is not connection):
        query = _compile(model, manager, alias, connection, lookups)
        with _compiled_lock:
            _compiled[key] = query
    if query is None:  # not a query this module can run: the ORM's
        return manager.get(**dict(lookups))
    params = list(query.params)
    for slot, field, (_, value) in zip(query.slots, query.fields, lookups, strict=True):
        params[slot] = _db_value(field, value, connection)
    with connection.cursor() as cursor:
        cursor.execute(query.sql, params)
        rows = cursor.fetchmany(MAX_GET_RESULTS)
    found = []
    for raw in rows:
        row = list(raw[: query.col_count])
        for pos, (convs, expression) in query.converters:
            value = row[pos]
            for convert in convs:
                value = convert(value, expression, connection)
            row[pos] = value
        found.append(model.from_db(alias, query.init_list, row[query.start : query.end]))
    if len(found) == 1:
        return found[0]
    if not found:
        raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")  # type: ignore[attr-defined]
    raise model.MultipleObjectsReturned(  # type: ignore[attr-defined]
        f"get() returned more than one {model._meta.object_name} -- it returned "
        f"{len(found) if len(found) < MAX_GET_RESULTS else f'more than {MAX_GET_RESULTS - 1}'}!"
    )


def _compile(
    model: type[Model], manager: Any, alias: str, connection: Any, lookups: Sequence[tuple[str, Any]]
) -> _Query | None:
    """Compile ``manager.get(**lookups)`` as ``QuerySet.get`` builds it, or None if the compiled
    query is not one row of ``model`` with exactly the lookups' values as its parameters."""
    queryset: QuerySet[Any] = manager.get_queryset().filter(**dict(lookups))
    query = queryset.query
    if query.can_filter() and not query.distinct_fields:
        queryset = queryset.order_by()
        query = queryset.query
    if query.select_for_update or queryset._prefetch_related_lookups or queryset._known_related_objects:  # type: ignore[attr-defined]
        return None
    query.set_limits(high=MAX_GET_RESULTS)
    compiler = query.get_compiler(using=alias)
    sql, params = compiler.as_sql()
    klass_info = compiler.klass_info
    if (
        not sql
        or klass_info is None
        or klass_info["model"] is not model
        or klass_info.get("related_klass_infos")
        or compiler.annotation_col_map
    ):
        return None
    select = compiler.select
    expressions = [s[0] for s in select[: compiler.col_count]]
    if compiler.has_composite_fields(expressions):
        return None
    fields = []
    slots = []
    for name, value in lookups:
        field = _lookup_field(model, name)
        if field is None:
            return None
        fields.append(field)
        sent = _db_value(field, value, connection)
        hits = [i for i, param in enumerate(params) if type(param) is type(sent) and param == sent]
        if len(hits) != 1:
            return None
        slots.append(hits[0])
    if sorted(slots) != list(range(len(params))):  # every parameter is a lookup's value
        return None
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    return _Query(
        connection=connection,
        sql=sql,
        params=tuple(params),
        slots=tuple(slots),
        fields=tuple(fields),
        converters=list(compiler.get_converters(expressions).items()),
        col_count=compiler.col_count,
        init_list=[s[0].target.attname for s in select[start:end]],
        start=start,
        end=end,
    )


def _lookup_field(model: type[Model], lookup: str) -> Field[Any, Any] | None:
    """The field of ``name`` or ``name__gt`` on ``model`` (the pk for ``pk``), if a plain column."""
    name, _, kind = lookup.partition("__")
    if kind not in ("", "exact", "gt"):
        return None
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    if not isinstance(field, Field) or field.is_relation or not field.concrete:
        return None
    return field
