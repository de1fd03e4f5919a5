"""Fleet operations the service composes: remote configuration and commands."""
