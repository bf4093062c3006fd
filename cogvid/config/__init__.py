"""Config: the typed schemas (`schema`) and composition over the packaged `conf/` tree (`compose`)."""
