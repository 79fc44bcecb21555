"""The health endpoint: one real query, 503 when the database does not answer."""

from __future__ import annotations

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

from shop.models import Order


def health(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database(), now()")
            database, now = cursor.fetchone()
        orders = Order.objects.count()
    except DatabaseError as error:
        return JsonResponse({"status": "unavailable", "error": type(error).__name__}, status=503)
    return JsonResponse(
        {"status": "ok", "database": database, "server_time": now.isoformat(), "orders": orders}
    )
