"""The compiled call path (`rnnplan.compiled_calls`, csrc/compiled_calls.cpp): on the CPU, its C++
table against fake driver functions (what it checks, which words it writes, what it launches and
returns, when it declines); on the GPU (marked gpu), a compiled module's repeat calls through it
against torch and against its Python path."""

import ctypes
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

import rnnplan as rp
from rnnplan import compiled_calls
from rnnplan.backends import cupy_unavailable_reason

GPU = cupy_unavailable_reason() is None and torch.cuda.is_available()
SET_PARAMS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
IS_CAPTURING = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))
U = ctypes.c_uint
LAUNCH_KERNEL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, U, U, U, U, U, U, U, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)


@pytest.fixture(scope="module")
def ext():
    module = compiled_calls.load()
    assert module is not None, compiled_calls.why_not()  # CI has ninja and a compiler: no skip
    return module


class FakeDriver:
    """The three driver functions as ctypes callbacks that record their calls."""

    def __init__(self, kernel_words=()):
        self.log, self.launch_rc, self.capturing = [], 0, 0
        self.kernel_words = kernel_words  # {function: its words}: what a kernel launch finds written there
        self.on_set = lambda: None  # what a test looks at when the node's arguments are set

        def set_params(graph_exec, node, params):
            self.log.append(("set", graph_exec, node, params))
            self.on_set()
            return 0

        def launch(graph_exec, stream):
            self.log.append(("launch", graph_exec, stream or 0))
            return self.launch_rc

        def is_capturing(stream, status):
            status[0] = self.capturing
            return 0

        def launch_kernel(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            self.log.append(("kernel", function, (gx, gy, gz), (bx, by, bz), shared, stream or 0, params,
                             list(self.kernel_words[function][3:7])))
            return 0
        self.callbacks = (SET_PARAMS(set_params), LAUNCH(launch), IS_CAPTURING(is_capturing),
                          LAUNCH_KERNEL(launch_kernel))
        self.addresses = [ctypes.cast(c, ctypes.c_void_p).value for c in self.callbacks]


def table(ext, lstm=True, steps=6, batch=2, batch_first=False):
    """A table of one entry (T=steps, B=batch) of a 2-layer module, input 4, h 3, c 5 wide, on the CPU."""
    driver, words = FakeDriver(), (ctypes.c_uint64 * 10)()
    cache, counts, zeroed = OrderedDict([("k", 1), ("other", 2)]), [0, 0], {"h0"}
    calls = ext.FastCalls(torch.empty(0), lstm, batch_first, 2, 4, 3, 5 if lstm else 3, *driver.addresses, cache.move_to_end,
                          counts)
    c_shape = [2, batch, 5] if lstm else [0]
    calls.add(steps, batch, 111, 222, 333, ctypes.addressof(words) + 24, [], "k", object(), zeroed,
              [[steps, batch, 3], [2, batch, 3], c_shape])
    return calls, driver, words, cache, counts, zeroed


def test_three_launches_write_each_copy_kernels_words_around_the_graph(ext):
    words_in, words_out = (ctypes.c_uint64 * 10)(), (ctypes.c_uint64 * 10)()
    driver = FakeDriver({7: words_in, 8: words_out})
    counts = [0, 0]
    calls = ext.FastCalls(torch.empty(0), True, False, 2, 4, 3, 5, *driver.addresses, OrderedDict(k=1).move_to_end,
                          counts)
    calls.add(6, 2, 111, 0, 0, 0, [[7, 3, 2, 256, 900, ctypes.addressof(words_in) + 24],
                                   [8, 1, 3, 256, 901, ctypes.addressof(words_out) + 24]],
              "k", object(), None, [[6, 2, 3], [2, 2, 3], [2, 2, 5]])
    assert calls.shapes() == [[6, 2, 3]]
    x, h0, c0 = torch.randn(6, 2, 4), torch.randn(2, 2, 3), torch.randn(2, 2, 5)
    out, (h_n, c_n) = calls(x, (h0, c0))
    assert driver.log == [
        ("kernel", 7, (3, 2, 1), (256, 1, 1), 0, 0, 900, [x.data_ptr(), h0.data_ptr(), c0.data_ptr(), 0]),
        ("launch", 111, 0),
        ("kernel", 8, (1, 3, 1), (256, 1, 1), 0, 0, 901, [out.data_ptr(), h_n.data_ptr(), c_n.data_ptr(), 0])]
    assert counts == [1, 0]


def test_a_call_writes_its_pointers_sets_the_node_and_launches(ext):
    calls, driver, words, cache, counts, zeroed = table(ext)
    assert calls.shapes() == [[6, 2, 1]]
    x = torch.randn(6, 2, 4)
    out, (h_n, c_n) = calls(x, None)
    assert (out.shape, h_n.shape, c_n.shape) == ((6, 2, 3), (2, 2, 3), (2, 2, 5))
    assert out.dtype == h_n.dtype == torch.float32 and out.is_contiguous() and c_n.is_contiguous()
    # one allocation, laid out as torch_calls.OutputsAhead lays it out
    assert h_n.data_ptr() == out.data_ptr() + out.numel() * 4 and c_n.data_ptr() == h_n.data_ptr() + h_n.numel() * 4
    assert list(words[3:10]) == [x.data_ptr(), 0, 0, 0, out.data_ptr(), h_n.data_ptr(), c_n.data_ptr()]
    assert driver.log == [("set", 111, 222, 333), ("launch", 111, 0)]
    assert zeroed == set() and counts == [1, 0] and list(cache) == ["other", "k"]  # LRU order and hits kept
    h0, c0 = torch.randn(2, 2, 3), torch.randn(2, 2, 5)
    out2, state = calls(x, (h0, c0))
    assert list(words[4:6]) == [h0.data_ptr(), c0.data_ptr()] and words[7] == out2.data_ptr() != out.data_ptr()
    assert counts == [2, 0] and len(driver.log) == 4


@pytest.mark.parametrize("batch_first", [False, True])
def test_an_input_laid_out_otherwise_is_copied_time_major_first(ext, batch_first):
    calls, driver, words, cache, counts, zeroed = table(ext, batch_first=batch_first)
    x = torch.randn(6, 2, 4)  # time-major values, handed in batch-first or strided
    given = x.transpose(0, 1).contiguous() if batch_first else torch.randn(2, 6, 4).transpose(0, 1).copy_(x)
    assert given.is_contiguous() == batch_first
    seen = []  # what the copy-in node would read, at the launch (the copy is freed after the call)
    driver.on_set = lambda: seen.append(list((ctypes.c_float * x.numel()).from_address(words[3])))
    out, (h_n, c_n) = calls(given, None)
    assert seen == [x.flatten().tolist()] and words[3] not in (0, given.data_ptr()) and driver.log == [("set", 111, 222, 333), ("launch", 111, 0)]
    assert out.shape == ((2, 6, 3) if batch_first else (6, 2, 3)) and h_n.shape == (2, 2, 3)
    assert (out.transpose(0, 1) if batch_first else out).is_contiguous()  # a view, as forward returns it
    assert words[7] == out.data_ptr() and counts == [1, 0]
    assert calls(x if batch_first else x.transpose(0, 1).contiguous(), None) is None  # the other layout's shape


def test_a_gru_call_returns_h_alone_and_no_c_pointer(ext):
    calls, driver, words, *_ = table(ext, lstm=False)
    out, h_n = calls(torch.randn(6, 2, 4), torch.randn(2, 2, 3))
    assert out.shape == (6, 2, 3) and h_n.shape == (2, 2, 3) and words[9] == 0


@pytest.mark.parametrize("case", ["dtype", "steps", "batch", "width", "3-D", "subclass", "packed", "hx shape",
                                  "hx dtype", "hx not a pair", "h alone for an LSTM", "capturing"])
def test_it_declines_what_forward_must_check_or_handle(ext, case):
    calls, driver, words, cache, counts, zeroed = table(ext)
    x, hx = torch.randn(6, 2, 4), None

    class Sub(torch.Tensor):
        pass
    if case == "dtype":
        x = x.double()
    elif case in ("steps", "batch", "width"):
        x = torch.randn(*{"steps": (5, 2, 4), "batch": (6, 3, 4), "width": (6, 2, 5)}[case])
    elif case == "3-D":
        x = x.reshape(12, 4)
    elif case == "subclass":
        x = x.as_subclass(Sub)
    elif case == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 3])
    elif case == "hx shape":
        hx = (torch.randn(2, 2, 5), torch.randn(2, 2, 5))
    elif case == "hx dtype":
        hx = (torch.randn(2, 2, 3).half(), torch.randn(2, 2, 5))
    elif case == "hx not a pair":
        hx = (torch.randn(2, 2, 3),)
    elif case == "h alone for an LSTM":
        hx = torch.randn(2, 2, 3)
    elif case == "capturing":
        driver.capturing = 1
    assert calls(x, hx) is None
    assert driver.log == [] and counts == [0, 0] and zeroed == {"h0"} and list(words) == [0] * 10


def test_a_failed_launch_raises_naming_the_call(ext):
    calls, driver, *_ = table(ext)
    driver.launch_rc = 1
    with pytest.raises(RuntimeError, match="cuGraphLaunch failed: CUDA error 1"):
        calls(torch.randn(6, 2, 4), None)


def _copies(function, grid):
    """A CopyJobs stand-in: its driver launch (FixedLaunch's fields) and grid."""
    driver = SimpleNamespace(function=function, block=256, changing=(3, 4, 5, 6), params=(ctypes.c_void_p * 10)(),
                             args=(ctypes.c_uint64 * 10)())
    return SimpleNamespace(driver=driver, grid=grid)


def test_launches_reads_each_kind_of_candidate_and_declines_the_rest():
    """What the table is made of (`compiled_calls.launches`), from stand-ins of the GPU objects: a
    graph holding both copies (GraphWithKernels' nodes), a plan's graph between two copy kernels
    (PointerCall, after its first launch), cuDNN's graph between them (CudnnGraph)."""
    from rnnplan.compiled_calls import launches

    def choice(run):
        return SimpleNamespace(chosen=SimpleNamespace(run=run))
    zeroed = set()
    kernel = SimpleNamespace(args=(ctypes.c_uint64 * 10)(), changing=tuple(range(3, 10)))
    params = (ctypes.c_uint64 * 8)()
    one = SimpleNamespace(exec=ctypes.c_void_p(5), nodes=[(ctypes.c_void_p(6), params, None, kernel), None])
    call = SimpleNamespace(one_launch=one, impl=SimpleNamespace(_zeroed_states=zeroed))
    assert launches(choice(SimpleNamespace(call=call))) == (
        5, 6, ctypes.addressof(params), ctypes.addressof(kernel.args) + 24, [], zeroed)
    copy_in, copy_out = _copies(7, (3, 2)), _copies(8, (1, 3))
    three = SimpleNamespace(one_launch=None, copy_in=copy_in, copy_out=copy_out, _graph_exec=None,
                            impl=SimpleNamespace(_zeroed_states=zeroed))
    assert launches(choice(SimpleNamespace(call=three))) == "later"  # (instantiated at its first launch)
    three._graph_exec = 99
    kernels = [[c.driver.function, *c.grid, 256, ctypes.addressof(c.driver.params), ctypes.addressof(c.driver.args) + 24]
               for c in (copy_in, copy_out)]
    assert launches(choice(SimpleNamespace(call=three))) == (99, 0, 0, 0, kernels, zeroed)
    cudnn = SimpleNamespace(one_launch=None, copies=(copy_in, copy_out),
                            graph=SimpleNamespace(raw_cuda_graph_exec=lambda: 77))
    assert launches(choice(cudnn)) == (77, 0, 0, 0, kernels, None)
    copy_out.driver = None  # CuPy's launches (no driver path): not for the table
    assert launches(choice(SimpleNamespace(call=three))) is None and launches(choice(cudnn)) is None
    kernel.changing = (3, 4, 5, 6)  # a graph whose copy-in node reads its pointers from the relay
    assert launches(choice(SimpleNamespace(call=call))) is None
    assert launches(choice(lambda *a: None)) is None  # the CPU's, or a debug executor's, run


def test_the_environment_can_turn_it_off(monkeypatch):
    monkeypatch.setattr(compiled_calls, "_state", {"module": None, "why": "not built yet", "thread": None,
                                                   "started": None})
    monkeypatch.setenv(compiled_calls.OFF, "0")
    assert compiled_calls.load() is None
    assert compiled_calls.why_not() == "the compiled call path is turned off (RNNPLAN_COMPILED_CALLS=0)"


def test_the_command_line_builds_it_ahead_or_says_why_not(ext, monkeypatch, capsys):
    from rnnplan.cli import main

    assert main(["build-calls"]) == 0
    assert "ready in" in capsys.readouterr().out
    monkeypatch.setattr(compiled_calls, "_state", {"module": None, "why": "not built yet", "thread": None,
                                                   "started": None})
    monkeypatch.setenv(compiled_calls.OFF, "0")
    assert main(["build-calls"]) == 2
    assert capsys.readouterr().err.strip() == ("rnnplan build-calls: error: the compiled call path is turned off "
                                              "(RNNPLAN_COMPILED_CALLS=0)")


def test_a_build_under_way_keeps_no_caller_waiting(monkeypatch):
    """start() (which a call caching a new GPU shape makes) returns at once while the worker's build
    holds load()'s lock; why_not() says it is building; the build's failure is then said."""
    import threading

    from torch.utils import cpp_extension

    monkeypatch.setattr(compiled_calls, "_state", {"module": None, "why": "not built yet", "thread": None,
                                                   "started": None})
    monkeypatch.delenv(compiled_calls.OFF, raising=False)
    building, release = threading.Event(), threading.Event()

    def slow_build(*args, **kwargs):
        building.set()
        release.wait(10)
        raise RuntimeError("g++: error: no such compiler")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "load", slow_build)
    compiled_calls.start()
    assert building.wait(10)
    done = threading.Event()
    threading.Thread(target=lambda: (compiled_calls.start(), done.set()), daemon=True).start()
    assert done.wait(2), "start() waited for the build under way"
    assert compiled_calls.why_not().startswith("the compiled call path is building")
    release.set()
    compiled_calls._state["thread"].join(10)
    assert compiled_calls.why_not() == "the compiled call path did not build: g++: error: no such compiler"


def test_on_the_cpu_a_compiled_module_has_no_table_and_refuses_a_bad_option():
    m = torch.nn.LSTM(3, 5).eval()
    fast = rp.compile(m)
    fast(torch.randn(4, 2, 3))
    assert fast._fast is None and not fast._fast_pending
    with pytest.raises(rp.CompileError, match="fast_call must be True or False"):
        rp.compile(m, fast_call="yes")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lowering, launches", [("persistent", 1), ("graph", 3)])
def test_gpu_repeat_calls_go_through_the_compiled_path(ext, cell, dtype, lowering, launches, monkeypatch):
    from tests.test_dropin import close, torch_call

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(3)
    kind = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    m = kind(16, 32, num_layers=2).cuda().eval().to(dtype)
    fast = rp.compile(m, autotune=False, lowering=lowering)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    x = torch.randn(6, 4, 16, device="cuda", dtype=dtype)
    assert close(fast(x), torch_call(m, x), tol)  # the first call, by Python: it builds the executor
    assert close(fast(x), torch_call(m, x), tol)  # (the graph lowering's CUDA graph is instantiated by then)
    assert fast._fast.shapes() == [[6, 4, launches]] and "the compiled call path" in fast.explain()
    # (patched on the class: an instance attribute left by undo() would be a bound method, a cycle
    # that keeps the module's GPU memory until a collection, in the middle of some later test)
    monkeypatch.setattr(type(fast), "run", lambda *a: pytest.fail("a repeat call took the Python path"))
    hits = fast.cache_info().hits
    results = []
    for i in range(4):
        xi = x * (i + 1) / 2
        state = None if i % 2 == 0 else results[-1][0][1]  # streaming: the state of the call before
        got = fast(xi, state)
        results.append((got, [t.clone() for t in (got[0], *(got[1] if cell == "lstm" else (got[1],)))]))
        assert close(got, torch_call(m, xi, state), tol)
    assert fast.cache_info().hits == hits + 4
    side = torch.cuda.Stream()  # on another stream, ordered after this one's work and back
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = fast(x)
    torch.cuda.current_stream().wait_stream(side)
    assert close(got, torch_call(m, x), tol)
    for got, kept in results:  # outputs of their own: later calls overwrite nothing
        assert all(torch.equal(a, b) for a, b in zip((got[0], *(got[1] if cell == "lstm" else (got[1],))), kept))
    monkeypatch.undo()
    key = fast._key(6, 4, False, x.device)  # what autotune times: the call as this path will make it
    timed = compiled_calls.timed_call(fast, key, fast._executors[key].chosen, (x, None, None, None))
    assert timed is not None and close(timed(), torch_call(m, x), tol)
    with pytest.raises(ValueError, match="has dtype"):  # declined in C++, named by forward
        fast(x.double())
    assert close(fast(x[:, :2].contiguous()), torch_call(m, x[:, :2]), tol)  # a new shape: Python, then the table
    assert len(fast._fast) == 2 or (lowering == "graph" and fast._fast_pending)  # (or at its next call)
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
@pytest.mark.parametrize("lowering", ["persistent", "graph"])
def test_gpu_batch_first_and_strided_calls_go_through_the_compiled_path(ext, lowering, monkeypatch):
    from tests.test_dropin import close, torch_call

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(5)
    m = torch.nn.LSTM(16, 32, num_layers=2, batch_first=True, bidirectional=lowering == "graph").cuda().eval()
    fast = rp.compile(m, autotune=False, lowering=lowering)
    x = torch.randn(4, 6, 16, device="cuda")  # (B, T, I)
    for _ in range(2):  # the first builds, by Python (the graph's CUDA graph is instantiated by the second)
        assert close(fast(x), torch_call(m, x))
    assert fast._fast.shapes()[0][:2] == [6, 4]
    monkeypatch.setattr(type(fast), "run", lambda *a: pytest.fail("a repeat call took the Python path"))
    state = None
    for given in (x, x * 0.5, torch.randn(6, 4, 16, device="cuda").transpose(0, 1)):  # the last one strided
        want = torch_call(m, given, state)
        got = fast(given, state)
        assert close(got, want)
        state = got[1]
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs CuPy, a GPU and torch with CUDA")
def test_gpu_the_compiled_path_runs_the_cudnn_candidate_and_steps_aside_in_a_capture(ext):
    import copy

    from rnnplan.autotune import Candidate, Choice, CudnnGraph
    from tests.test_dropin import close, torch_call

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(4)
    m = torch.nn.LSTM(16, 32, num_layers=2).cuda().eval()
    fast = rp.compile(m, autotune=False, lowering="persistent")
    x = torch.randn(6, 4, 16, device="cuda")
    fast(x)
    key = fast._key(6, 4, False, x.device)
    graph = CudnnGraph(copy.deepcopy(m), x, True, 2, 32)
    fast._executors[key] = Choice(Candidate("cudnn", graph, graph.nbytes, ""), "by hand")
    fast._refresh_fast()
    assert len(fast._fast) == 1
    h = (torch.randn(2, 4, 32, device="cuda"), torch.randn(2, 4, 32, device="cuda"))
    for state in (None, h, None):
        assert close(fast(x, state), torch_call(m, x, state), 1e-5)
    captured = torch.cuda.CUDAGraph()  # in a capture the C++ path declines: the Python path records torch's call
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side), torch.cuda.graph(captured, stream=side):
        out, _ = fast(x)
    torch.cuda.current_stream().wait_stream(side)
    captured.replay()
    torch.cuda.synchronize()
    assert close(out, torch_call(m, x)[0], 1e-5)
    torch.backends.cudnn.allow_tf32 = True
