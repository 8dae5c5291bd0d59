"""The plugin's apps and menu entries, as the api-server loads them."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest

from delivery.notification_inbox import INBOX_ENV


def _load_plugin() -> ModuleType:
    sys.modules.pop("delivery_plugin", None)
    return importlib.import_module("delivery_plugin")


def test_the_notifications_page_is_in_the_menu_where_there_is_an_inbox(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv(INBOX_ENV, f"{tmp_path}/inbox.sqlite3")
    local = _load_plugin().DeliveryPlugin
    assert [(v["name"], v["href"]) for v in local.external_views] == [
        ("DORA metrics", "/delivery/dora/"),
        ("Notifications", "/delivery/notifications/"),
    ]
    # The specific prefixes before /delivery, which would catch them.
    assert [app["url_prefix"] for app in local.fastapi_apps] == [
        "/delivery/dora",
        "/delivery/notifications",
        "/delivery",
    ]
    monkeypatch.delenv(INBOX_ENV)
    elsewhere = _load_plugin().DeliveryPlugin
    assert [v["name"] for v in elsewhere.external_views] == ["DORA metrics"]
    assert "/delivery/notifications" in [app["url_prefix"] for app in elsewhere.fastapi_apps]
    sys.modules.pop("delivery_plugin", None)
