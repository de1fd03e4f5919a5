"""The MQTT interface: requests, streamed replies, cancel, status with Last Will."""
