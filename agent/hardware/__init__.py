"""Hardware detection (HardwareProfile) and execution-provider ranking."""
