"""netweft CNI plugin: spec types, the runtime entry point and pod wiring."""
