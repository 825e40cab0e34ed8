from tests.broker.conftest import client, markers, restate_service  # noqa: F401
