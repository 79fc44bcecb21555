from __future__ import annotations

from django.http import HttpResponse
from django.urls import path

app_name = "djdt"
urlpatterns = [path("", lambda request: HttpResponse("toolbar"), name="index")]
