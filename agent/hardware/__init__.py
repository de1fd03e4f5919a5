"""Hardware detection (HardwareInventory) and execution-provider ranking."""
