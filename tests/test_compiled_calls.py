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
PACKED = (0, torch.nn.utils.rnn.PackedSequence)  # no bucket
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
        self.on_kernel = lambda function, words: None  # ... and at a kernel's launch

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
            words = list(self.kernel_words[function])
            self.log.append(("kernel", function, (gx, gy, gz), (bx, by, bz), shared, stream or 0, params,
                             words[3:7] if len(words) == 10 else words))  # (a copy kernel's p0-p3; else all)
            self.on_kernel(function, words)
            return 0
        self.callbacks = (SET_PARAMS(set_params), LAUNCH(launch), IS_CAPTURING(is_capturing),
                          LAUNCH_KERNEL(launch_kernel))
        self.addresses = [ctypes.cast(c, ctypes.c_void_p).value for c in self.callbacks]


def table(ext, lstm=True, steps=6, batch=2, batch_first=False):
    """A table of one entry (T=steps, B=batch) of a 2-layer module, input 4, h 3, c 5 wide, on the CPU."""
    driver, words = FakeDriver(), (ctypes.c_uint64 * 10)()
    cache, counts, zeroed = OrderedDict([("k", 1), ("other", 2)]), [0, 0], {"h0"}
    calls = ext.FastCalls(torch.empty(0), lstm, batch_first, 2, 4, 3, 5 if lstm else 3, *driver.addresses,
                          cache.move_to_end, counts, *PACKED)
    c_shape = [2, batch, 5] if lstm else [0]
    calls.add(steps, batch, 111, 222, 333, ctypes.addressof(words) + 24, [], "k", object(), zeroed,
              [[steps, batch, 3], [2, batch, 3], c_shape], 0)
    return calls, driver, words, cache, counts, zeroed


def test_three_launches_write_each_copy_kernels_words_around_the_graph(ext):
    words_in, words_out = (ctypes.c_uint64 * 10)(), (ctypes.c_uint64 * 10)()
    driver = FakeDriver({7: words_in, 8: words_out})
    counts = [0, 0]
    calls = ext.FastCalls(torch.empty(0), True, False, 2, 4, 3, 5, *driver.addresses, OrderedDict(k=1).move_to_end,
                          counts, *PACKED)
    calls.add(6, 2, 111, 0, 0, 0, [[7, 3, 2, 256, 900, ctypes.addressof(words_in) + 24],
                                   [8, 1, 3, 256, 901, ctypes.addressof(words_out) + 24]],
              "k", object(), None, [[6, 2, 3], [2, 2, 3], [2, 2, 5]], 0)
    assert calls.shapes() == [[6, 2, 3, 0]]
    x, h0, c0 = torch.randn(6, 2, 4), torch.randn(2, 2, 3), torch.randn(2, 2, 5)
    out, (h_n, c_n) = calls(x, (h0, c0))
    assert driver.log == [
        ("kernel", 7, (3, 2, 1), (256, 1, 1), 0, 0, 900, [x.data_ptr(), h0.data_ptr(), c0.data_ptr(), 0]),
        ("launch", 111, 0),
        ("kernel", 8, (1, 3, 1), (256, 1, 1), 0, 0, 901, [out.data_ptr(), h_n.data_ptr(), c_n.data_ptr(), 0])]
    assert counts == [1, 0]


def test_a_call_writes_its_pointers_sets_the_node_and_launches(ext):
    calls, driver, words, cache, counts, zeroed = table(ext)
    assert calls.shapes() == [[6, 2, 1, 0]]
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
    assert seen == [x.flatten().tolist()] and words[3] not in (0, given.data_ptr())
    assert driver.log == [("set", 111, 222, 333), ("launch", 111, 0)]
    assert out.shape == ((2, 6, 3) if batch_first else (6, 2, 3)) and h_n.shape == (2, 2, 3)
    assert (out.transpose(0, 1) if batch_first else out).is_contiguous()  # a view, as forward returns it
    assert words[7] == out.data_ptr() and counts == [1, 0]
    assert calls(x if batch_first else x.transpose(0, 1).contiguous(), None) is None  # the other layout's shape


def test_calls_with_and_without_a_state_take_their_own_entries(ext):
    """cuDNN's graph captured twice (autotune.CudnnGraph's twin): one shape, an entry for the calls
    given a state and one for those without; an entry for one kind declines the other."""
    driver, words = FakeDriver(), [(ctypes.c_uint64 * 10)() for _ in range(2)]
    calls = ext.FastCalls(torch.empty(0), True, False, 2, 4, 3, 5, *driver.addresses, OrderedDict(k=1).move_to_end,
                          [0, 0], *PACKED)
    for exec_, which, w in ((111, 1, words[0]), (444, 2, words[1])):
        calls.add(6, 2, exec_, 222, 333, ctypes.addressof(w) + 24, [], "k", object(), None,
                  [[6, 2, 3], [2, 2, 3], [2, 2, 5]], which)
    assert calls.shapes() == [[6, 2, 1, 1], [6, 2, 1, 2]]
    x, hx = torch.randn(6, 2, 4), (torch.randn(2, 2, 3), torch.randn(2, 2, 5))
    calls(x, None)
    calls(x, hx)
    assert [entry[1] for entry in driver.log if entry[0] == "launch"] == [444, 111]
    assert words[1][4] == 0 and words[0][4] == hx[0].data_ptr()
    alone = ext.FastCalls(torch.empty(0), True, False, 2, 4, 3, 5, *driver.addresses, OrderedDict(k=1).move_to_end,
                          [0, 0], *PACKED)
    alone.add(6, 2, 111, 222, 333, ctypes.addressof(words[0]) + 24, [], "k", object(), None,
              [[6, 2, 3], [2, 2, 3], [2, 2, 5]], 1)
    assert alone(x, None) is None and alone(x, hx) is not None
    with pytest.raises(RuntimeError, match="which is 0"):
        alone.add(6, 2, 111, 222, 333, ctypes.addressof(words[0]) + 24, [], "k", object(), None,
                  [[6, 2, 3], [2, 2, 3], [2, 2, 5]], 3)


def packed_table(ext, bucket=0):
    """A table of one packed entry (plan steps 4, batch 3) of the 2-layer module above: packed.cu's
    kernels as functions 11 (unpack) and 12 (repack), the states' copies 13 and 14, graph 555."""
    unpack, repack = (ctypes.c_uint64 * 11)(), (ctypes.c_uint64 * 9)()
    states_in, states_out = (ctypes.c_uint64 * 10)(), (ctypes.c_uint64 * 10)()
    driver = FakeDriver({11: unpack, 12: repack, 13: states_in, 14: states_out})
    cache, counts, zeroed = OrderedDict([("p", 1), ("other", 2)]), [0, 0], {"h0"}
    calls = ext.FastCalls(torch.empty(0), True, False, 2, 4, 3, 5, *driver.addresses, cache.move_to_end, counts,
                          bucket, *PACKED[1:])
    calls.add_packed(4, 3, 555, [11, 7, 1, 256, 901, ctypes.addressof(unpack)],
                     [12, 0, 1, 256, 902, ctypes.addressof(repack)],
                     [13, 1, 2, 256, 903, ctypes.addressof(states_in) + 24],
                     [14, 1, 2, 256, 904, ctypes.addressof(states_out) + 24], 12, "p", object(), zeroed)
    return calls, driver, cache, counts, zeroed


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_a_packed_call_lays_out_its_rows_and_launches_five_kernels(ext, enforce_sorted):
    calls, driver, cache, counts, zeroed = packed_table(ext)
    assert calls.shapes() == [[4, 3, 5, 3]]
    lengths = [4, 3, 2] if enforce_sorted else [2, 4, 3]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 3, 4), lengths, enforce_sorted=enforce_sorted)
    seen = {}  # what each kernel reads, at its launch: the layout, the rank and order of the rows

    def read(function, words):
        if function == 11:
            seen["layout"] = list((ctypes.c_int64 * 8).from_address(words[3]))
            seen["rank"] = list((ctypes.c_int64 * 3).from_address(words[4]))
        if function == 12:
            seen["order"] = list((ctypes.c_int64 * 3).from_address(words[3]))
    driver.on_kernel = read
    h0, c0 = torch.randn(2, 3, 3), torch.randn(2, 3, 5)
    result, (h_n, c_n) = calls(packed, (h0, c0))
    assert type(result) is torch.nn.utils.rnn.PackedSequence and result.data.shape == (9, 3)
    assert result.batch_sizes is packed.batch_sizes and result.sorted_indices is packed.sorted_indices
    assert result.unsorted_indices is packed.unsorted_indices and h_n.shape == (2, 3, 3) and c_n.shape == (2, 3, 5)
    assert seen["layout"] == [3, 3, 2, 1, 0, 3, 6, 8]  # the batch sizes, then each step's first row
    identity = [0, 1, 2]
    assert seen["rank"] == (identity if enforce_sorted else packed.unsorted_indices.tolist())
    assert seen["order"] == (identity if enforce_sorted else packed.sorted_indices.tolist())
    kinds = [(e[0], e[1]) for e in driver.log]
    assert kinds == [("kernel", 11), ("kernel", 13), ("launch", 555), ("kernel", 12), ("kernel", 14)]
    unpack, states_in, repack, states_out = (e for e in driver.log if e[0] == "kernel")
    assert unpack[2] == (7, 1, 1) and unpack[7][0] == packed.data.data_ptr() and unpack[7][5] == 4
    assert states_in[7] == [0, h0.data_ptr(), c0.data_ptr(), 0]
    assert repack[2] == (1, 1, 1) and repack[7][1] == result.data.data_ptr() and repack[7][4] == 4
    assert repack[7][6] == 9 and states_out[7] == [0, h_n.data_ptr(), c_n.data_ptr(), 0]
    assert zeroed == set() and counts == [1, 0] and list(cache) == ["other", "p"]


def test_a_packed_call_declines_what_the_python_path_must_handle(ext):
    calls, driver, cache, counts, zeroed = packed_table(ext)
    x = torch.randn(4, 3, 4)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 3, 2])
    make = torch.nn.utils.rnn.PackedSequence._make
    for bad in (torch.nn.utils.rnn.pack_padded_sequence(x, [3, 3, 2]),  # 3 steps: not cached
                torch.nn.utils.rnn.pack_padded_sequence(x[:, :2], [4, 3]),  # batch 2: not cached
                make([packed.data.double(), packed.batch_sizes, None, None]),  # dtype
                make([packed.data[:-1], packed.batch_sizes, None, None]),  # rows against the batch sizes
                make([packed.data, torch.tensor([3, 3, 4, 1]), None, None]),  # sizes that grow
                make([packed.data, packed.batch_sizes, torch.tensor([0, 1, 2]), None])):  # one index alone
        assert calls(bad, None) is None
    assert calls(packed, torch.randn(2, 3, 3)) is None  # an LSTM's hx is a pair
    assert driver.log == [] and counts == [0, 0] and zeroed == {"h0"}
    bucketed, driver, *_ = packed_table(ext, bucket=4)  # 3 steps padded to the plan's 4
    assert bucketed(torch.nn.utils.rnn.pack_padded_sequence(x, [3, 3, 2]), None) is not None
    assert [e[1] for e in driver.log][:1] == [11] and driver.log[0][7][5] == 3


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


def test_packed_launches_reads_a_masked_plans_kernels_once_its_graph_is_instantiated():
    """The packed entry's parts (`compiled_calls.packed_launches`) from stand-ins: packed.cu's two
    KernelCalls (their first words' addresses), the states' copies, the plan's graph exec; None
    before CuPy instantiated the graph (then the module remakes its table after its first packed
    call), where the driver path is missing, or where other words change a call."""
    from rnnplan.compiled_calls import packed_launches

    def kernel_call(function, changing):
        return SimpleNamespace(driver=SimpleNamespace(function=function, block=256, changing=changing,
                                                      params=(ctypes.c_void_p * 11)(), args=(ctypes.c_uint64 * 11)()))
    unpack, repack = kernel_call(11, (0, 3, 4, 5)), kernel_call(12, (1, 2, 3, 4, 6))
    states_in, zeroed = _copies(13, (1, 2)), set()  # (and no states-out copy)
    call = SimpleNamespace(packing=(unpack, repack), _graph_exec=None, _unpack_grid=(7, 1), _out_row_bytes=12,
                           states_in=states_in, states_out=None, impl=SimpleNamespace(_zeroed_states=zeroed))
    choice = SimpleNamespace(chosen=SimpleNamespace(run=SimpleNamespace(call=call, packed=object())))
    assert packed_launches(choice) is None  # not instantiated yet
    call._graph_exec = 555
    got = packed_launches(choice)
    whole = [[k.driver.function, *grid, 256, ctypes.addressof(k.driver.params), ctypes.addressof(k.driver.args)]
             for k, grid in ((unpack, (7, 1)), (repack, (0, 1)))]
    copy_in = [13, 1, 2, 256, ctypes.addressof(states_in.driver.params), ctypes.addressof(states_in.driver.args) + 24]
    assert got == (555, *whole, copy_in, [], 12, zeroed)
    repack.driver.changing = (1, 2, 3, 4)
    assert packed_launches(choice) is None
    repack.driver = None  # CuPy's launch
    assert packed_launches(choice) is None
    assert packed_launches(SimpleNamespace(chosen=SimpleNamespace(run=SimpleNamespace(call=call)))) is None


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
    assert fast._fast.shapes() == [[6, 4, launches, 0]] and "the compiled call path" in fast.explain()
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
@pytest.mark.parametrize("cell, bucket", [("lstm", None), ("gru", 4)])
def test_gpu_packed_repeat_calls_go_through_the_compiled_path(ext, cell, bucket, monkeypatch):
    from tests.test_dropin import close, torch_call

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(6)
    kind = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    m = kind(16, 32, num_layers=2, bidirectional=True).cuda().eval()
    fast = rp.compile(m, autotune=False, bucket=bucket)
    x = torch.randn(6, 4, 16, device="cuda")
    # The first call builds the shape (and runs it as a padded call); the second, a packed call by
    # Python, launches the plan's own graph (CuPy instantiates it then) and remakes the table.
    for lengths in ([6, 3, 5, 1], [6, 2, 2, 4]):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        assert close(fast(packed), torch_call(m, packed))
    assert [shape for shape in fast._fast.shapes() if shape[3] == 3] == [[8 if bucket else 6, 4, 5, 3]]
    assert " packed by 5 launches" in fast.explain()
    monkeypatch.setattr(type(fast), "_packed_repeat", lambda *a: pytest.fail("a packed call took the Python path"))
    h = torch.randn(4, 4, 32, device="cuda")
    state = (h, torch.randn_like(h)) if cell == "lstm" else h
    hits, kept = fast.cache_info().hits, []
    for lengths, sort, hx in (([6, 2, 2, 4], False, None), ([6, 5, 3, 1], True, state), ([2, 6, 6, 1], False, state),
                              ([5, 5, 4, 1], True, None)):  # (the last: 5 steps, in the same bucket or not cached)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=sort)
        if bucket is None and max(lengths) != 6:
            monkeypatch.undo()  # a shape not cached: the Python path builds it
        got = fast(packed, hx)
        assert close(got, torch_call(m, packed, *(() if hx is None else (hx,))))
        kept.append((got, got[0].data.clone()))
    assert all(torch.equal(got[0].data, data) for got, data in kept)  # outputs of their own
    assert fast.cache_info().hits >= hits + 3
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
    assert [shape[3] for shape in fast._fast.shapes()] == [1, 2]  # with a state, and its twin's without
    assert "(without a state)" in fast.explain()
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
