"""Serving a model beyond one process (issue 20): requests of different lengths batched into one
packed call (`model.ServedModel.run_batch`), bodies checked before anything runs (`protocol`), a
batching layer of plain threads (`batching.Batcher`, no Ray), and the Ray Serve application
(`ray_app`, the only module that imports Ray; `rnnplan serve MODEL` on the command line).

    import rnnplan.serve
    from ray import serve
    serve.run(rnnplan.serve.app("model.npz"), route_prefix="/")
"""

from rnnplan.serve.batching import Batcher
from rnnplan.serve.model import Answer, Request, ServedModel, load_model

__all__ = ["Answer", "Batcher", "Request", "ServedModel", "app", "load_model"]


def app(model, **options):
    """The Ray Serve application serving `model` (`ray_app.app`: its options), for `serve.run`."""
    from rnnplan.serve.ray_app import app as build

    return build(model, **options)
