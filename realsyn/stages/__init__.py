"""The stages of the pipeline, one module each, named as the stage is everywhere (its job in ``jobs/``, its console
script ``realsyn-<name>``, its config section, ``gold.funnel.stage`` and ``gold.runs.stage``). Each module's entry
point is ``run_<name>(lakehouse, cfg) -> summary``. A stage imports no other stage: what several share lives in
the modules of ``realsyn`` beside this package, and only :mod:`realsyn.pipeline` imports the stages."""
