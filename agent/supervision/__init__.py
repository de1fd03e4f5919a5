"""How the daemon cooperates with its supervisor (systemd, a container runtime)."""
