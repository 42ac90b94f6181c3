"""The application layer, the only one the CLI calls.

- :mod:`~autoprune.app.experiment`: config -> data, baseline, evaluator, searcher; ``run_search`` (the one
  writer of ``policy.json`` and ``history.csv``);
- :mod:`~autoprune.app.pipeline`: ``autoprune run`` (search -> apply -> fine-tune -> test -> export -> MLflow);
- :mod:`~autoprune.app.commands`: one function per experiment command (train, estimate, search, worker, run, transfer);
- :mod:`~autoprune.app.model_files`: the commands on saved files (apply, finetune, evaluate, export);
- :mod:`~autoprune.app.tables`: what each command shows;
- :mod:`~autoprune.app.uris`: ``runs:/`` and ``models:/`` URIs resolved to local files.
"""
