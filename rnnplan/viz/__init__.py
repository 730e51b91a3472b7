"""Looking at plans: the text summary, Graphviz DOT (op and cell views), the wavefront picture,
Chrome-trace timelines. Functions of a Plan; the Plan knows nothing of them."""

from rnnplan.viz.dot import INSTALL_HINT, render, to_dot
from rnnplan.viz.summary import summarize
from rnnplan.viz.timeline import predicted_trace, trace_events, write_trace
from rnnplan.viz.wavefront import save_wavefront_png

__all__ = ["INSTALL_HINT", "predicted_trace", "render", "save_wavefront_png", "summarize", "to_dot", "trace_events",
           "write_trace"]
