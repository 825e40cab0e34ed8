from tests.broker.conftest import broker, client, markers, restate_service  # noqa: F401
