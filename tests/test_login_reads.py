"""tether's get_user (tether._logins: session and user read by SQL compiled once) against Django's.

Each case builds two identical sessions (same user, same data, same engine), changes what the case
is about (expiry, corrupt data, the user deactivated, deleted or given a new password, the secret
key rotated), then reads one with Django's ``get_user`` and the other with tether's, and compares
everything observable: the user (class, pk, every field as the ORM reads it), the exception if
any, the session afterwards (its key kept, cycled or dropped; its data; its flags; its row and
its cache entry), and the number of SQL queries. On SQLite and on the real PostgreSQL (a router
sends ``auth`` and ``sessions`` there), for the ``db`` and ``cached_db`` engines.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.backends.cached_db import KEY_PREFIX
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.db import connections
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

import tether._logins
from tests.conftest import require_service

pytestmark = pytest.mark.django_db(databases="__all__")

ENGINES = {"db": "django.contrib.sessions.backends.db", "cached_db": "django.contrib.sessions.backends.cached_db"}
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
CUSTOM_BACKEND = "tests.test_login_reads.CustomBackend"
_names = itertools.count()


class CustomBackend(ModelBackend):
    """A backend of the project's own (here: ModelBackend's behaviour, but not ModelBackend)."""


class ToAlias:
    """Sends every read and write to one database (the "pg" alias for the PostgreSQL runs)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return self.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return self.alias

    def allow_relation(self, *args: Any, **kwargs: Any) -> bool:
        return True


@pytest.fixture(params=["sqlite", "pg"])
def alias(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield "default"
        return
    require_service("PostgreSQL", "127.0.0.1", 5432)
    with override_settings(DATABASE_ROUTERS=[ToAlias("pg")]):
        yield "pg"


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, settings: Any) -> str:
    settings.SESSION_ENGINE = ENGINES[request.param]
    return str(request.param)


@pytest.fixture(autouse=True)
def _setup(settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AUTHENTICATION_BACKENDS = [MODEL_BACKEND, CUSTOM_BACKEND]
    caches["default"].clear()
    yield
    caches["default"].clear()


class Request:
    """What get_user reads: ``.session``."""

    def __init__(self, session: Any) -> None:
        self.session = session


class Spy:
    """Counts the calls tether makes to Django's own get_user (its fallback)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = tether._logins.django_get_user

        def counting(request: Any) -> Any:
            self.calls += 1
            return original(request)

        monkeypatch.setattr(tether._logins, "django_get_user", counting)


def new_user(alias: str) -> User:
    user = User.objects.db_manager(alias).create_user(f"user{next(_names)}", password="pw-1")
    user.last_login = timezone.now() - timedelta(days=1, microseconds=7)  # a datetime to convert
    user.first_name = "Ann é"
    user.save()
    return user


def new_session(user: User | None, backend: str = MODEL_BACKEND, **data: Any) -> str:
    store = import_module_store()
    if user is not None:
        store[SESSION_KEY] = user._meta.pk.value_to_string(user)
        store[BACKEND_SESSION_KEY] = backend
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store["other"] = [1, "two"]
    store.update(data)
    store.save()
    assert store.session_key is not None
    return store.session_key


def import_module_store(key: str | None = None) -> Any:
    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def describe_user(user: Any, alias: str) -> dict[str, Any]:
    if user is None:
        return {"none": True}
    found: dict[str, Any] = {"class": type(user), "authenticated": user.is_authenticated, "pk": user.pk}
    if isinstance(user, User):
        fresh = User.objects.using(alias).get(pk=user.pk)  # what the ORM reads now
        fields = {f.attname: getattr(user, f.attname) for f in User._meta.concrete_fields}
        assert fields == {f.attname: getattr(fresh, f.attname) for f in User._meta.concrete_fields}
        assert [type(v) for v in fields.values()] == [type(getattr(fresh, n)) for n in fields]
        found.update(fields, db=user._state.db, adding=user._state.adding)
    return found


def read(run: Callable[[Any], Any], key: str, alias: str) -> dict[str, Any]:
    """Run ``run`` (a get_user) on a fresh store for ``key``: everything observable afterwards."""
    store = import_module_store(key)
    with CaptureQueriesContext(connections[alias]) as queries:
        try:
            user, error = run(Request(store)), None
        except Exception as exc:  # both must raise the same
            user, error = None, type(exc)
    now_key = store.session_key
    data = dict(store._session) if error is None else None
    if data and HASH_SESSION_KEY in data and user is not None and hasattr(user, "get_session_auth_hash"):
        data[HASH_SESSION_KEY] = "current" if data[HASH_SESSION_KEY] == user.get_session_auth_hash() else "other"
    rows = Session.objects.using(alias)
    return {
        "user": describe_user(user, alias),
        "error": error,
        "key": "same" if now_key == key else "none" if now_key is None else "new",
        "data": data,
        "accessed": store.accessed,
        "modified": store.modified,
        "old row": rows.filter(session_key=key).exists(),
        "new row": now_key not in (None, key) and rows.filter(session_key=now_key).exists(),
        "old cache": caches["default"].get(KEY_PREFIX + key) is not None,
        "queries": len(queries),
    }


def compare(alias: str, monkeypatch: pytest.MonkeyPatch, keys: tuple[str, str], *, delegated: bool) -> dict[str, Any]:
    """Django's get_user on the first session, tether's on the second: the same in every respect
    (the query count too, unless tether handed the case to Django's get_user)."""
    spy = Spy(monkeypatch)
    django_saw = read(get_user, keys[0], alias)
    tether_saw = read(tether._logins.get_user, keys[1], alias)
    assert spy.calls == (1 if delegated else 0)
    if delegated:  # tether read the session (and the user) before handing over: more queries
        django_saw.pop("queries"), tether_saw.pop("queries")
    assert tether_saw == django_saw
    return tether_saw


def twice(make: Callable[[], str]) -> tuple[str, str]:
    return make(), make()


def drop_cache(keys: tuple[str, ...]) -> None:
    """For cached_db: the next read goes to the database (the case is about the row)."""
    for key in keys:
        caches["default"].delete(KEY_PREFIX + key)


def test_valid_session(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["pk"] == user.pk and saw["key"] == "same" and saw["data"][HASH_SESSION_KEY] == "current"
    assert saw["queries"] == (1 if engine == "cached_db" else 2)  # cached_db: the session from the cache
    if engine == "cached_db":
        drop_cache(keys)
        saw = compare(alias, monkeypatch, keys, delegated=False)
        assert saw["queries"] == 2 and saw["old cache"]  # read from the row, and cached again


def test_expired_session(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    Session.objects.using(alias).filter(session_key__in=keys).update(expire_date=timezone.now() - timedelta(seconds=1))
    drop_cache(keys)
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["key"] == "none" and saw["data"] == {}


def test_missing_session_and_malformed_key(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    saw = compare(alias, monkeypatch, ("k" * 32, "k" * 32), delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["key"] == "none" and saw["queries"] == 1
    saw = compare(alias, monkeypatch, ("short", "short"), delegated=False)  # not a valid key: no query
    assert saw["queries"] == 0 and saw["data"] == {}


def test_corrupt_session_data(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    Session.objects.using(alias).filter(session_key__in=keys).update(session_data="not:a!valid signed*blob")
    drop_cache(keys)
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["data"] == {} and saw["key"] == "same"


def test_anonymous_session(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = twice(lambda: new_session(None))
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["data"] == {"other": [1, "two"]}


def test_inactive_user(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    User.objects.using(alias).filter(pk=user.pk).update(is_active=False)
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["key"] == "same" and saw["old row"]  # not flushed


def test_deleted_user(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    User.objects.using(alias).filter(pk=user.pk).delete()
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["old row"]


def test_password_changed_flushes_the_session(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    user.set_password("pw-2")
    user.save()
    saw = compare(alias, monkeypatch, keys, delegated=True)
    assert saw["user"]["class"] is AnonymousUser and saw["key"] == "none" and not saw["old row"]
    assert not saw["old cache"]


def test_session_without_auth_hash_is_flushed(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user, **{HASH_SESSION_KEY: ""}))
    saw = compare(alias, monkeypatch, keys, delegated=True)
    assert saw["user"]["class"] is AnonymousUser and not saw["old row"]


def test_secret_key_fallbacks(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """A session hashed with a key now in SECRET_KEY_FALLBACKS: the user, and what Django does to the
    session (5.2 and 6.0: a new session key and the hash of the current key)."""
    user = new_user(alias)
    settings.SECRET_KEY = "the-old-key-" + "x" * 40
    keys = twice(lambda: new_session(user))
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "the-new-key-" + "y" * 40, [settings.SECRET_KEY]
    saw = compare(alias, monkeypatch, keys, delegated=True)
    assert saw["user"]["pk"] == user.pk and saw["key"] == "new" and saw["data"][HASH_SESSION_KEY] == "current"
    assert saw["new row"] and not saw["old row"]
    settings.SECRET_KEY_FALLBACKS = []  # rotated out: the session no longer signs in
    keys = twice(lambda: new_session(user, **{HASH_SESSION_KEY: "0" * 64}))
    assert compare(alias, monkeypatch, keys, delegated=True)["user"]["class"] is AnonymousUser


def test_backend_not_configured(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user))
    settings.AUTHENTICATION_BACKENDS = [CUSTOM_BACKEND]
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["user"]["class"] is AnonymousUser and saw["queries"] == (0 if engine == "cached_db" else 1)


def test_malformed_user_id_raises_as_in_django(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = twice(lambda: new_session(None, **{SESSION_KEY: "not-a-number", BACKEND_SESSION_KEY: MODEL_BACKEND}))
    saw = compare(alias, monkeypatch, keys, delegated=False)
    assert saw["error"] is not None


def test_custom_backend_falls_back(alias: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = new_user(alias)
    keys = twice(lambda: new_session(user, backend=CUSTOM_BACKEND))
    saw = compare(alias, monkeypatch, keys, delegated=True)
    assert saw["user"]["pk"] == user.pk


def test_other_session_engines_fall_back(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """signed_cookies (and any engine but db and cached_db): Django's get_user, as it is."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    user = new_user("default")
    spy = Spy(monkeypatch)
    assert tether._logins.get_user(Request(import_module_store(new_session(user)))) == user
    assert spy.calls == 1


def test_compiled_queries_are_dropped_when_settings_change(settings: Any) -> None:
    user = new_user("default")
    assert tether._logins.get_user(Request(import_module_store(new_session(user)))) == user
    assert tether._logins._compiled
    settings.AUTHENTICATION_BACKENDS = [MODEL_BACKEND]
    assert not tether._logins._compiled
