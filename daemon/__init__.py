"""netweft node daemon: composition root, CLI and the lab."""
