"""``python -m autoprune`` and the ``autoprune`` command: :func:`console`."""

from autoprune.cli import main


def console() -> None:
    """The ``autoprune`` command: this process is autoprune's own, so ONNX Runtime ratios are timed on its shared pool
    (:func:`autoprune.measure.onnxruntime.own_process`), then :func:`autoprune.cli.main`."""
    from autoprune.measure.onnxruntime import own_process

    own_process()
    main()


if __name__ == "__main__":
    console()
