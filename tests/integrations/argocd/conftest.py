from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.integrations.argocd.support import TOKEN, WRONG_TOKEN
from tests.standins.argocd_server import ArgoCDStandIn

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def argocd_server() -> Iterator[ArgoCDStandIn]:
    with ArgoCDStandIn(token=TOKEN) as server:
        yield server


@pytest.fixture
def argocd_conn(argocd_server: ArgoCDStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    """``AIRFLOW_CONN_ARGOCD_TEST`` pointing at the stand-in, with the right token."""
    monkeypatch.setenv("AIRFLOW_CONN_ARGOCD_TEST", argocd_server.connection_json())
    return "argocd_test"


@pytest.fixture
def bad_token_conn(argocd_server: ArgoCDStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    """The same connection with a token the server refuses."""
    monkeypatch.setenv("AIRFLOW_CONN_ARGOCD_TEST", argocd_server.connection_json(token=WRONG_TOKEN))
    return "argocd_test"
