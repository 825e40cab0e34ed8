from tests.ingress_kafka.conftest import admin, restate_counter

__all__ = ["admin", "restate_counter"]
