"""Topic names of the MQTT convention (see shared/DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str
    pool: str | None = None

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def request(self) -> str:
        return f"{self.root}/infer/req"

    @property
    def cancel(self) -> str:
        return f"{self.root}/infer/cancel"

    @property
    def telemetry(self) -> str:
        return f"{self.root}/telemetry"

    @property
    def commands(self) -> str:
        """The subscription for every fleet command, `.../cmd/{name}`."""
        return f"{self.root}/cmd/+"

    def is_command(self, topic: str) -> bool:
        prefix = f"{self.root}/cmd/"
        return topic.startswith(prefix) and "/" not in topic[len(prefix) :]

    @property
    def config_desired(self) -> str:
        return f"{self.root}/config/desired"

    @property
    def config_reported(self) -> str:
        return f"{self.root}/config/reported"

    @property
    def pool_request(self) -> str | None:
        """The shared subscription that spreads a pool's requests over its gateways."""
        if self.pool is None:
            return None
        return f"$share/{self.pool}/{self.prefix}/pool/{self.pool}/infer/req"

    def is_request(self, topic: str) -> bool:
        pool = self.pool_request
        return topic == self.request or (
            pool is not None and topic == pool.split("/", 2)[2]  # delivered without $share
        )
