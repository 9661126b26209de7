"""Mounts the posts routes in the flavour the deployment asked for (POSTS_VIEWS)."""

from django.urls import include, path

urlpatterns = [path("", include("posts.urls"))]

handler404 = "posts.errors.not_found"
handler500 = "posts.errors.server_error"
handler400 = "posts.errors.bad_request"
