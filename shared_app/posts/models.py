"""The study's one model."""

import uuid

from django.db import models


class Post(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=100)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def as_json(self) -> dict[str, object]:
        return post_json(self.id, self.title, self.content, self.created_at, self.updated_at)


def post_json(
    id: uuid.UUID, title: str, content: str, created_at: object, updated_at: object
) -> dict[str, object]:
    """One serialization for every flavour, so native and ORM answers are identical."""
    return {
        "id": str(id),
        "title": title,
        "content": content,
        "created_at": created_at,
        "updated_at": updated_at,
    }
