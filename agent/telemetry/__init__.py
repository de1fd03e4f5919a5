"""Telemetry: the Prometheus registry (/metrics) and the periodic MQTT snapshot."""
