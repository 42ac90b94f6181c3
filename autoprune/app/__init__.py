"""The application layer: experiment wiring, the ``run`` pipeline, and MLflow URI resolution; the CLI calls only this."""
