from tests.ingress_kafka.conftest import admin, broker, restate_counter

__all__ = ["admin", "broker", "restate_counter"]
