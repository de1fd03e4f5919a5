"""edge-agent: a small language model daemon for IoT gateways."""

__version__ = "0.1.0"
