"""Development tools, run from the repository root and never shipped in the wheel (pyproject.toml packages only
albert_export, graphs, calibration, runtime and serving):

    python -m devtools.train    train the embedded default model on devtools/corpus/ (albert_export/default_model)
    python -m devtools.bench    the CPU benchmark behind docs/bench.md (needs the export, cpu and bench extras)

devtools.accuracy is the accuracy oracle (held-out masked LM / sentence order of a model or bundle, and the
agreement of two bundles); devtools.pretraining_data turns text into the examples both use.
"""
