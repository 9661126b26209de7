"""The study's async views: async def with the async ORM API.

Under Django's ASGI handler each ORM call still runs on a thread (sync_to_async), so
each in-flight request holds its own database connection.
"""

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from posts.models import Post
from posts.validation import NewPost, cpu_answer, method_not_allowed, parse_new_post
from posts.views_sync import READ_LIMIT


async def cpu(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    return JsonResponse(cpu_answer(settings.POSTS_CPU_LOOP, settings.POSTS_CPU_MS))


async def io_create(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "POST"):
        return refused
    new = parse_new_post(request)
    if not isinstance(new, NewPost):
        return new
    post = await Post.objects.acreate(title=new.title, content=new.content)
    return JsonResponse(post.as_json())


async def io_read(request: HttpRequest) -> JsonResponse:
    if refused := method_not_allowed(request, "GET"):
        return refused
    posts = [p.as_json() async for p in Post.objects.all()[:READ_LIMIT]]
    return JsonResponse({"ct": await Post.objects.acount(), "posts": posts})
