"""The chat's pages: ordinary Django views, sync like most of a real project."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods

from tether import broadcast_sync, user_group

from .models import Message
from .sockets import ANNOUNCEMENTS, MAX_LENGTH, ONLINE, SLUG, room_group

MAX_ROOMS = 8  # rooms one page shows at once (each is a subscription on the page's one socket)


class RoomForm(forms.Form):
    name = forms.CharField(max_length=50, help_text="letters, digits, - and _")

    def clean_name(self) -> str:
        slug = slugify(self.cleaned_data["name"])
        if not slug:
            raise forms.ValidationError("use at least one letter or digit")
        return slug


class AnnounceForm(forms.Form):
    text = forms.CharField(max_length=MAX_LENGTH, widget=forms.TextInput(attrs={"autocomplete": "off"}))


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The rooms that have messages, and a form to open any room."""
    form = RoomForm(request.GET or None)
    if form.is_valid():
        return redirect("room", slug=form.cleaned_data["name"])
    used = Message.objects.filter(kind=Message.Kind.MESSAGE).values_list("room", flat=True).distinct()
    rooms = sorted({"lobby", *used})
    return render(request, "chat/home.html", {"rooms": rooms, "form": form})


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    """The chat page: room ``slug``, and the rooms named by ``?also=`` beside it, all over one socket.

    The messages come from ``room_messages`` and the socket; the page adds and removes rooms itself
    and keeps ``?also=`` up to date, so a reload shows the same rooms.
    """
    rooms = [slug]
    for other in request.GET.getlist("also"):
        if SLUG.fullmatch(other) and other not in rooms and len(rooms) < MAX_ROOMS:
            rooms.append(other)
    config = {
        "rooms": rooms,
        "maxRooms": MAX_ROOMS,
        "me": request.user.get_username(),
        "groups": {
            "room": room_group(""),
            "announcements": ANNOUNCEMENTS,
            "online": ONLINE,
            "mentions": user_group(request.user),
        },
    }
    return render(request, "chat/room.html", {"room": slug, "config": config})


def room_messages(request: HttpRequest, slug: str) -> HttpResponse:
    """The room's last messages and announcements as JSON, oldest first: what a page shows when it
    opens a room, and reloads when the socket couldn't recover what it missed. 401 when signed out
    (a script reads this, not a person: no redirect to the login page)."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "signed out"}, status=401)
    return JsonResponse({"room": slug, "messages": [m.as_json() for m in Message.recent(slug)]})


@login_required
@require_http_methods(["GET", "POST"])
def announce(request: HttpRequest) -> HttpResponse:
    """Send a line to every open room: a plain sync view calling ``broadcast_sync``. The line is
    stored too, so that a room page opened (or reloaded) later shows it in its history."""
    form = AnnounceForm(request.POST or None)
    if form.is_valid():
        text = form.cleaned_data["text"]
        announcement = Message.objects.create(kind=Message.Kind.ANNOUNCEMENT, user=request.user, text=text)
        broadcast_sync(ANNOUNCEMENTS, announcement.as_json())
        messages.success(request, f"Announced to all rooms: {text}")
        return redirect("announce")
    return render(request, "chat/announce.html", {"form": form})


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account with Django's own form and log it in."""
    form = UserCreationForm(request.POST or None)
    if form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})
