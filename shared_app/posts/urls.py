"""The three routes of the study, in the flavour named by settings.POSTS_VIEWS."""

from importlib import import_module

from django.conf import settings
from django.urls import path

views = import_module(f"posts.views_{settings.POSTS_VIEWS}")

urlpatterns = [
    path("cpu/", views.cpu, name="cpu"),
    path("io_create/", views.io_create, name="io_create"),
    path("io_read/", views.io_read, name="io_read"),
]
