"""Looking at plans: Graphviz DOT (op and cell views), the wavefront picture, Chrome-trace timelines."""

from rnnplan.viz.dot import INSTALL_HINT, render, to_dot
from rnnplan.viz.timeline import predicted_trace, trace_events, write_trace
from rnnplan.viz.wavefront import save_wavefront_png

__all__ = ["INSTALL_HINT", "predicted_trace", "render", "save_wavefront_png", "to_dot", "trace_events", "write_trace"]
