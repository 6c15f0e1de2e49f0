"""The chat's pages: ordinary Django views, sync like most of a real project."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods

from tether import broadcast_sync

from .models import Message
from .sockets import ANNOUNCEMENTS, MAX_LENGTH


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
    """The room page; the messages come over the socket."""
    return render(request, "chat/room.html", {"room": slug})


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
