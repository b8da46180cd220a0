"""One module per family of scenarios; each exposes ``run(run, settings, run_dir)``."""
