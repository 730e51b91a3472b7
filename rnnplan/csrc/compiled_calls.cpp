// The compiled call path of `rnnplan.compile` (rnnplan/compiled_calls.py builds and loads it): a repeat
// call at a cached shape of fixed length goes from the module's forward straight here. It checks the
// call as forward would (exact tensors of the compiled dtype and device, the shape cached, no stream
// capture), makes a batch-first or strided input time-major and contiguous as forward does,
// allocates the outputs in one block on the caller's stream and launches: where the candidate is one
// CUDA-graph launch (`GraphWithKernels`: the copy-in node, the plan or cuDNN's graph, the copy-out
// node), it writes the seven pointers the copy-in node takes, sets that node's arguments and launches
// the graph; else (graphs too large to copy) the copy-in kernel, the graph and the copy-out kernel,
// three launches. The work of torch_calls.by_pointers and PointerCall.whole / start / finish (or the
// cuDNN candidate's), without Python between the driver calls; a PackedSequence at a cached masked
// shape is packed_by_pointers' work (`packed` below). Anything else returns None, and
// forward takes its Python path, which raises the errors and handles the rest. The driver's functions
// arrive as addresses (ctypes' view of libcuda), so nothing here needs CUDA's headers; the CUDA graph
// objects belong to the Python objects an entry keeps alive.
#include <torch/extension.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using SetParams = int (*)(void* exec, void* node, const void* params);  // cuGraphExecKernelNodeSetParams
using Launch = int (*)(void* exec, void* stream);                        // cuGraphLaunch
using IsCapturing = int (*)(void* stream, int* status);                   // cuStreamIsCapturing
using LaunchKernel = int (*)(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                             unsigned shared, void* stream, void** params, void** extra);  // cuLaunchKernel

void* address(int64_t value) { return reinterpret_cast<void*>(static_cast<intptr_t>(value)); }

// A kernel launch whose arguments are 64-bit words (driver_launch.FixedLaunch): `words` points at the
// four that change a call (the caller's pointers p0-p3 of copies.cu), or at the first word (packed.cu's
// kernels, whose changing words are scattered).
struct Kernel {
  void* function;
  unsigned grid_x, grid_y, block;
  void** params;
  uint64_t* words;
};

Kernel kernel_of(const std::vector<int64_t>& k) {
  TORCH_CHECK(k.size() == 6, "a kernel is (function, grid x, grid y, block, params, words)");
  return {address(k[0]), static_cast<unsigned>(k[1]), static_cast<unsigned>(k[2]), static_cast<unsigned>(k[3]),
          static_cast<void**>(address(k[4])), static_cast<uint64_t*>(address(k[5]))};
}

struct Entry {
  int64_t steps, batch;
  int64_t which;           // the calls it takes: 0 every one, 1 those given a state, 2 those without
  void* exec;              // the instantiated graph (CUgraphExec)
  void* node;              // one launch: its copy-in node (CUgraphNode); three launches: nullptr
  const void* params;      // that node's CUDA_KERNEL_NODE_PARAMS, whose argument words follow `words`
  uint64_t* words;         // x, h0, c0, mask, out, h_n, c_n: the copy-in node's changing arguments
  Kernel copy_in, copy_out;  // three launches: the copies around the graph
  py::object key, keep, zeroed;  // its key in the executor cache; the owner of the above; a set to clear
  std::array<std::vector<int64_t>, 3> shapes;  // out, h_n, c_n (c_n empty but for LSTMs)
  std::array<std::vector<int64_t>, 3> strides;
  std::array<int64_t, 3> offsets;
  int64_t total;
};

// A packed call of a masked plan (torch_calls.packed_by_pointers, PointerCall.packed / packed_finish):
// packed.cu's unpack (the padded input and mask from the packed rows), the states in, the plan's
// graph, packed.cu's repack (the packed output rows), the states out. `unpack` and `repack` take
// their words from the start of their argument words (unpack: 0 data, 3 layout, 4 rank, 5 steps;
// repack: 1 packed rows, 2 layout, 3 order, 4 steps, 6 rows); the states' copies as Entry's.
struct PackedEntry {
  int64_t steps, batch;  // the plan's (the bucket's) steps
  void* exec;
  Kernel unpack, repack, states_in, states_out;  // states_*.function nullptr: none
  int64_t out_row_bytes;  // a packed output row's bytes (the repack's grid is made from the rows)
  at::Tensor identity;    // 0..B-1 on the device: rank and order of a batch packed sorted
  py::object key, keep, zeroed;
};

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

class FastCalls {
 public:
  // `like`: an empty tensor of the compiled dtype on the compiled device; `batch_first`: inputs
  // and outputs are (B, T, .); `layers`: layers x directions; `width`: h's size (the projection's
  // where there is one); `hidden`: c's.
  FastCalls(const at::Tensor& like, bool lstm, bool batch_first, int64_t layers, int64_t input_size, int64_t width,
            int64_t hidden, int64_t set_params, int64_t launch, int64_t is_capturing, int64_t launch_kernel,
            py::object move_to_end, py::list counts, int64_t bucket, py::object packed_type)
      : dtype_(like.scalar_type()), device_(like.device()), options_(like.options()), lstm_(lstm),
        batch_first_(batch_first), layers_(layers), input_size_(input_size), width_(width), hidden_(hidden),
        set_params_(reinterpret_cast<SetParams>(address(set_params))),
        launch_(reinterpret_cast<Launch>(address(launch))),
        is_capturing_(reinterpret_cast<IsCapturing>(address(is_capturing))),
        launch_kernel_(reinterpret_cast<LaunchKernel>(address(launch_kernel))),
        move_to_end_(std::move(move_to_end)), counts_(std::move(counts)), bucket_(bucket),
        packed_type_(packed_type), make_packed_(packed_type.attr("_make")) {}

  // One launch: `node`, `params`, `words` of the copy-in node. Three: node 0, `copies` the copy-in
  // and copy-out kernels. `which`: the calls it takes (0 all; 1 given a state, 2 without: cuDNN's
  // graph captured twice, autotune.CudnnGraph's twin).
  void add(int64_t steps, int64_t batch, int64_t exec, int64_t node, int64_t params, int64_t words,
           std::vector<std::vector<int64_t>> copies, py::object key, py::object keep, py::object zeroed,
           std::vector<std::vector<int64_t>> shapes, int64_t which) {
    TORCH_CHECK(shapes.size() == 3, "FastCalls.add: three output shapes (out, h_n, c_n)");
    TORCH_CHECK(node != 0 || copies.size() == 2, "FastCalls.add: a copy-in node, or both copy kernels");
    TORCH_CHECK(which >= 0 && which <= 2, "FastCalls.add: which is 0 (every call), 1 (given a state) or 2 (without)");
    Entry e{steps, batch, which, address(exec), address(node), address(params), static_cast<uint64_t*>(address(words)),
            {}, {}, std::move(key), std::move(keep), std::move(zeroed), {}, {}, {}, 0};
    if (node == 0) {
      e.copy_in = kernel_of(copies[0]);
      e.copy_out = kernel_of(copies[1]);
    }
    for (int i = 0; i < 3; ++i) {
      int64_t n = 1;
      for (int64_t s : shapes[i]) n *= s;
      e.shapes[i] = shapes[i];
      e.strides[i] = contiguous_strides(shapes[i]);
      e.offsets[i] = e.total;  // as torch_calls.OutputsAhead lays them out
      e.total += n;
    }
    entries_.push_back(std::move(e));
  }

  // A masked plan's packed calls at (steps, batch): `unpack`, `repack` as (function, grid x, grid y,
  // block, params, words from the first), `states_in`, `states_out` as add's copies (empty: none).
  void add_packed(int64_t steps, int64_t batch, int64_t exec, std::vector<int64_t> unpack, std::vector<int64_t> repack,
                  std::vector<int64_t> states_in, std::vector<int64_t> states_out, int64_t out_row_bytes,
                  py::object key, py::object keep, py::object zeroed) {
    PackedEntry e{steps, batch, address(exec), kernel_of(unpack), kernel_of(repack), {}, {}, out_row_bytes,
                  at::arange(batch, options_.dtype(at::kLong)), std::move(key), std::move(keep), std::move(zeroed)};
    if (!states_in.empty()) e.states_in = kernel_of(states_in);
    if (!states_out.empty()) e.states_out = kernel_of(states_out);
    packed_.push_back(std::move(e));
  }

  size_t size() const { return entries_.size() + packed_.size(); }

  // (steps, batch, launches a call, which calls) of each entry: 1 launch (the copies as graph nodes)
  // or 3; which as `add` takes it, 3 for packed calls.
  std::vector<std::array<int64_t, 4>> shapes() const {
    std::vector<std::array<int64_t, 4>> found;
    for (const auto& e : entries_) found.push_back({e.steps, e.batch, e.node != nullptr ? 1 : 3, e.which});
    for (const auto& e : packed_) {  // which 3: packed calls, by unpack, (states in), graph, repack, (states out)
      const int64_t states = (e.states_in.function != nullptr) + (e.states_out.function != nullptr);
      found.push_back({e.steps, e.batch, 3 + states, 3});
    }
    return found;
  }

  py::object call(py::handle input, py::handle hx) {
    PyObject* in = input.ptr();
    if (Py_TYPE(in) == reinterpret_cast<PyTypeObject*>(packed_type_.ptr())) return packed(in, hx);
    if (!THPVariable_CheckExact(in)) return py::none();
    const at::Tensor& given = THPVariable_Unpack(in);
    if (given.scalar_type() != dtype_ || given.device() != device_ || given.dim() != 3 || given.size(2) != input_size_)
      return py::none();
    const bool stated = !hx.is_none();
    Entry* e = batch_first_ ? find(given.size(1), given.size(0), stated) : find(given.size(0), given.size(1), stated);
    if (e == nullptr) return py::none();
    uint64_t h0 = 0, c0 = 0;
    if (!hx.is_none() && !states(hx.ptr(), e->batch, &h0, &c0)) return py::none();
    void* stream = nullptr;
    if (!stream_for_call(&stream)) return py::none();
    // The plans and cuDNN's graph read time-major rows: a copy on the caller's stream where the input
    // is not laid out so (its block goes back to that stream's pool, after the launches below read it).
    at::Tensor x = batch_first_ ? given.transpose(0, 1) : given;
    if (!x.is_contiguous()) x = x.contiguous();

    at::Tensor flat = at::empty({e->total}, options_);  // on the current stream, the one launched on
    at::Tensor outs[3];
    for (int i = 0; i < 3; ++i) outs[i] = flat.as_strided(e->shapes[i], e->strides[i], e->offsets[i]);
    uint64_t ins[4] = {reinterpret_cast<uintptr_t>(x.data_ptr()), h0, c0, 0};  // (no mask: fixed lengths)
    uint64_t outs_at[4] = {0, 0, 0, 0};
    for (int i = 0; i < 3; ++i) outs_at[i] = lstm_ || i < 2 ? reinterpret_cast<uintptr_t>(outs[i].data_ptr()) : 0;
    cleared(e->zeroed);
    if (e->node != nullptr) {
      std::copy(ins, ins + 4, e->words);
      std::copy(outs_at, outs_at + 3, e->words + 4);
      check(set_params_(e->exec, e->node, e->params), "cuGraphExecKernelNodeSetParams");
      check(launch_(e->exec, stream), "cuGraphLaunch");
    } else {
      launch(e->copy_in, ins, stream);
      check(launch_(e->exec, stream), "cuGraphLaunch");
      launch(e->copy_out, outs_at, stream);
    }
    counted(e->key);

    at::Tensor y = batch_first_ ? outs[0].transpose(0, 1) : outs[0];  // (as forward returns it: a view)
    py::object out = py::reinterpret_steal<py::object>(THPVariable_Wrap(y));
    py::object h_n = py::reinterpret_steal<py::object>(THPVariable_Wrap(outs[1]));
    if (!lstm_) return py::make_tuple(out, h_n);
    py::object c_n = py::reinterpret_steal<py::object>(THPVariable_Wrap(outs[2]));
    return py::make_tuple(out, py::make_tuple(h_n, c_n));
  }

 private:
  // The caller's stream on the compiled device, where that device is current and the stream is not
  // capturing (false otherwise: the Python path then runs).
  bool stream_for_call(void** stream) const {
    *stream = nullptr;
    if (device_.is_cuda()) {
      const auto* guard = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
      if (guard->getDevice() != device_) return false;  // the driver acts in the current context
      *stream = guard->getStream(device_).native_handle();
    }
    int capturing = 0;
    return is_capturing_(*stream, &capturing) == 0 && capturing == 0;
  }

  // An int64 tensor on the compiled device, one-dimensional of `n` elements, contiguous (an index).
  bool index_tensor(PyObject* o, int64_t n) const {
    if (!THPVariable_CheckExact(o)) return false;
    const at::Tensor& t = THPVariable_Unpack(o);
    return t.scalar_type() == at::kLong && t.device() == device_ && t.dim() == 1 && t.size(0) == n && t.is_contiguous();
  }

  // A PackedSequence at a cached masked shape: what packed_by_pointers and PointerCall.packed /
  // packed_finish do (the layout made on the host and copied from pinned memory, five launches).
  py::object packed(PyObject* in, py::handle hx) {
    PyObject *data_o = PyTuple_GET_ITEM(in, 0), *sizes_o = PyTuple_GET_ITEM(in, 1);
    PyObject *sorted_o = PyTuple_GET_ITEM(in, 2), *unsorted_o = PyTuple_GET_ITEM(in, 3);
    if (!THPVariable_CheckExact(data_o) || !THPVariable_CheckExact(sizes_o)) return py::none();
    const at::Tensor& data = THPVariable_Unpack(data_o);
    const at::Tensor& sizes = THPVariable_Unpack(sizes_o);
    if (data.scalar_type() != dtype_ || data.device() != device_ || data.dim() != 2 || data.size(1) != input_size_ ||
        !data.is_contiguous() || !sizes.device().is_cpu() || sizes.scalar_type() != at::kLong || sizes.dim() != 1 ||
        sizes.numel() == 0 || !sizes.is_contiguous())
      return py::none();
    const int64_t steps = sizes.numel(), rows = data.size(0);
    const int64_t* size = sizes.data_ptr<int64_t>();
    const int64_t batch = size[0], plan_steps = bucket_ > 0 ? (steps + bucket_ - 1) / bucket_ * bucket_ : steps;
    PackedEntry* e = nullptr;
    for (auto& p : packed_)
      if (p.steps == plan_steps && p.batch == batch) e = &p;
    if (e == nullptr) return py::none();
    const bool sorted = sorted_o == Py_None && unsorted_o == Py_None;
    if (!sorted && !(index_tensor(sorted_o, batch) && index_tensor(unsorted_o, batch))) return py::none();
    uint64_t h0 = 0, c0 = 0;
    if (!hx.is_none() && !states(hx.ptr(), batch, &h0, &c0)) return py::none();
    void* stream = nullptr;
    if (!stream_for_call(&stream)) return py::none();
    // The layout packed.cu reads: the batch sizes, then each step's first row (their exclusive sum).
    at::Tensor host = at::empty({2 * steps}, at::TensorOptions().dtype(at::kLong).pinned_memory(device_.is_cuda()));
    int64_t* layout_at = host.data_ptr<int64_t>();
    int64_t sum = 0;
    for (int64_t t = 0; t < steps; ++t) {
      if (size[t] < 1 || size[t] > batch || (t > 0 && size[t] > size[t - 1])) return py::none();
      layout_at[t] = size[t];
      layout_at[steps + t] = sum;
      sum += size[t];
    }
    if (sum != rows) return py::none();
    // (from pinned memory, a copy on the caller's stream that does not wait for it; the pinned block is
    // reused only after the copy, by torch's caching host allocator)
    at::Tensor layout = device_.is_cuda() ? host.to(device_, /*non_blocking=*/true) : host;
    const uint64_t layout_ptr = reinterpret_cast<uintptr_t>(layout.data_ptr());
    const uint64_t rank = reinterpret_cast<uintptr_t>(
        sorted ? e->identity.data_ptr() : THPVariable_Unpack(unsorted_o).data_ptr());
    const uint64_t order = reinterpret_cast<uintptr_t>(
        sorted ? e->identity.data_ptr() : THPVariable_Unpack(sorted_o).data_ptr());
    cleared(e->zeroed);

    e->unpack.words[0] = reinterpret_cast<uintptr_t>(data.data_ptr());
    e->unpack.words[3] = layout_ptr;
    e->unpack.words[4] = rank;
    e->unpack.words[5] = static_cast<uint64_t>(steps);
    start(e->unpack, e->unpack.grid_x, stream);
    const uint64_t ins[4] = {0, h0, c0, 0};
    if (e->states_in.function != nullptr) launch(e->states_in, ins, stream);
    check(launch_(e->exec, stream), "cuGraphLaunch");

    const int64_t out_width = e->out_row_bytes / static_cast<int64_t>(data.element_size());
    const int64_t state_n = layers_ * batch * width_, c_n = lstm_ ? layers_ * batch * hidden_ : 0;
    at::Tensor flat = at::empty({rows * out_width + state_n + c_n}, options_);  // while the plan runs
    at::Tensor out = flat.as_strided({rows, out_width}, {out_width, 1}, 0);
    at::Tensor h_n = flat.as_strided({layers_, batch, width_}, {batch * width_, width_, 1}, rows * out_width);
    at::Tensor c = lstm_ ? flat.as_strided({layers_, batch, hidden_}, {batch * hidden_, hidden_, 1},
                                           rows * out_width + state_n)
                         : flat.new_empty({0});
    e->repack.words[1] = reinterpret_cast<uintptr_t>(out.data_ptr());
    e->repack.words[2] = layout_ptr;
    e->repack.words[3] = order;
    e->repack.words[4] = static_cast<uint64_t>(steps);
    e->repack.words[6] = static_cast<uint64_t>(rows);
    // The repack's grid, as packed_finish makes it (pointer_call._blocks: 2-byte words, at most 4096 blocks)
    const int64_t words = rows * e->out_row_bytes / 2, block = e->repack.block;
    start(e->repack, static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(4096, (words + block - 1) / block))),
          stream);
    const uint64_t outs_at[4] = {0, reinterpret_cast<uintptr_t>(h_n.data_ptr()),
                                 lstm_ ? reinterpret_cast<uintptr_t>(c.data_ptr()) : 0, 0};
    if (e->states_out.function != nullptr) launch(e->states_out, outs_at, stream);
    counted(e->key);

    py::object rows_out = py::reinterpret_steal<py::object>(THPVariable_Wrap(out));
    py::object result = make_packed_(py::make_tuple(rows_out, py::handle(sizes_o), py::handle(sorted_o),
                                                    py::handle(unsorted_o)));
    py::object h = py::reinterpret_steal<py::object>(THPVariable_Wrap(h_n));
    if (!lstm_) return py::make_tuple(result, h);
    return py::make_tuple(result, py::make_tuple(h, py::reinterpret_steal<py::object>(THPVariable_Wrap(c))));
  }

  // The states the executor zeroed for a call without them: this call's copy-in writes them (a set
  // of the Python side's, Executor.run's note; None for cuDNN's graph).
  static void cleared(const py::object& zeroed) {
    if (!zeroed.is_none() && PySet_Clear(zeroed.ptr()) != 0) throw py::error_already_set();
  }

  // The executor cache's LRU order and hit count, as forward's look-up keeps them.
  void counted(const py::object& key) {
    move_to_end_(key);
    PyObject* hits = PyList_GET_ITEM(counts_.ptr(), 0);
    PyObject* more = PyNumber_Add(hits, one_.ptr());
    if (more == nullptr) throw py::error_already_set();
    PyList_SetItem(counts_.ptr(), 0, more);  // (steals `more`, releases the old count)
  }

  Entry* find(int64_t steps, int64_t batch, bool stated) {
    for (auto& e : entries_)
      if (e.steps == steps && e.batch == batch && (e.which == 0 || e.which == (stated ? 1 : 2))) return &e;
    return nullptr;
  }

  bool state(PyObject* o, int64_t batch, int64_t size, uint64_t* ptr) const {
    if (!THPVariable_CheckExact(o)) return false;
    const at::Tensor& t = THPVariable_Unpack(o);
    if (t.scalar_type() != dtype_ || t.device() != device_ || t.dim() != 3 || t.size(0) != layers_ ||
        t.size(1) != batch || t.size(2) != size || !t.is_contiguous())
      return false;
    *ptr = reinterpret_cast<uintptr_t>(t.data_ptr());
    return true;
  }

  // hx as forward takes it: (h_0, c_0) for an LSTM, h_0 otherwise.
  bool states(PyObject* hx, int64_t batch, uint64_t* h0, uint64_t* c0) const {
    if (!lstm_) return state(hx, batch, hidden_, h0);
    if (!(PyTuple_Check(hx) || PyList_Check(hx)) || PySequence_Fast_GET_SIZE(hx) != 2) return false;
    PyObject** items = PySequence_Fast_ITEMS(hx);
    return state(items[0], batch, width_, h0) && state(items[1], batch, hidden_, c0);
  }

  void start(const Kernel& k, unsigned grid_x, void* stream) const {
    check(launch_kernel_(k.function, grid_x, k.grid_y, 1, k.block, 1, 1, 0, stream, k.params, nullptr),
          "cuLaunchKernel");
  }

  void launch(const Kernel& k, const uint64_t* values, void* stream) const {
    std::copy(values, values + 4, k.words);
    check(launch_kernel_(k.function, k.grid_x, k.grid_y, 1, k.block, 1, 1, 0, stream, k.params, nullptr),
          "cuLaunchKernel");
  }

  static void check(int rc, const char* what) {
    if (rc != 0) throw std::runtime_error(std::string(what) + " failed: CUDA error " + std::to_string(rc));
  }

  at::ScalarType dtype_;
  c10::Device device_;
  at::TensorOptions options_;
  bool lstm_, batch_first_;
  int64_t layers_, input_size_, width_, hidden_;
  SetParams set_params_;
  Launch launch_;
  IsCapturing is_capturing_;
  LaunchKernel launch_kernel_;
  py::object move_to_end_;
  py::list counts_;
  int64_t bucket_;  // pad lengths to a multiple of it (0: none), as the module does
  py::object packed_type_, make_packed_;  // torch's PackedSequence, and its _make (no checks: torch's own fields)
  py::int_ one_{1};
  std::vector<Entry> entries_;
  std::vector<PackedEntry> packed_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<FastCalls>(m, "FastCalls")
      .def(py::init<const at::Tensor&, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    int64_t, py::object, py::list, int64_t, py::object>())
      .def("add", &FastCalls::add)
      .def("add_packed", &FastCalls::add_packed)
      .def("__len__", &FastCalls::size)
      .def("shapes", &FastCalls::shapes)
      .def("__call__", &FastCalls::call);
}
