"""The study's sync views: plain def with the ORM."""

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from posts.models import Post
from posts.validation import NewPost, cpu_answer, method_not_allowed, parse_new_post

READ_LIMIT = 25


def cpu(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    return JsonResponse(cpu_answer(settings.POSTS_CPU_LOOP, settings.POSTS_CPU_MS))


def io_create(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "POST"):
        return refused
    new = parse_new_post(request)
    if not isinstance(new, NewPost):
        return new
    post = Post.objects.create(title=new.title, content=new.content)
    return JsonResponse(post.as_json())


def io_read(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    posts = [p.as_json() for p in Post.objects.all()[:READ_LIMIT]]
    return JsonResponse({"ct": Post.objects.count(), "posts": posts})
