"""The operator HTTP API: status, detections, counts, workers, health, metrics, stream control.

:func:`visionflow.api.app.create_app` builds the FastAPI app over a
:class:`~visionflow.api.sources.StatusSource` (the in-process pipeline, or Redis alone);
:mod:`visionflow.api.server` serves it with uvicorn in a thread of ``visionflow run`` or in the
foreground for ``visionflow api``.
"""
