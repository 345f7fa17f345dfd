"""LightningModules for each method, plus the shared model components in ``lightning_modules.models``."""
