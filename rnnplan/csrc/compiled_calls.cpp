// The compiled call path of `rnnplan.compile` (rnnplan/compiled_calls.py builds and loads it): a repeat
// call at a cached shape of fixed length goes from the module's forward straight here. It checks the
// call as forward would (exact tensors of the compiled dtype and device, the shape cached, no stream
// capture), makes a batch-first or strided input time-major and contiguous as forward does,
// allocates the outputs in one block on the caller's stream and launches: where the candidate is one
// CUDA-graph launch (`GraphWithKernels`: the copy-in node, the plan or cuDNN's graph, the copy-out
// node), it writes the seven pointers the copy-in node takes, sets that node's arguments and launches
// the graph; else (graphs too large to copy) the copy-in kernel, the graph and the copy-out kernel,
// three launches. The work of torch_calls.by_pointers and PointerCall.whole / start / finish (or the
// cuDNN candidate's), without Python between the driver calls. Anything else returns None, and
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
// four that change a call (the caller's pointers p0-p3 of copies.cu).
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
            py::object move_to_end, py::list counts)
      : dtype_(like.scalar_type()), device_(like.device()), options_(like.options()), lstm_(lstm),
        batch_first_(batch_first), layers_(layers), input_size_(input_size), width_(width), hidden_(hidden),
        set_params_(reinterpret_cast<SetParams>(address(set_params))),
        launch_(reinterpret_cast<Launch>(address(launch))),
        is_capturing_(reinterpret_cast<IsCapturing>(address(is_capturing))),
        launch_kernel_(reinterpret_cast<LaunchKernel>(address(launch_kernel))),
        move_to_end_(std::move(move_to_end)), counts_(std::move(counts)) {}

  // One launch: `node`, `params`, `words` of the copy-in node. Three: node 0, `copies` the copy-in
  // and copy-out kernels.
  void add(int64_t steps, int64_t batch, int64_t exec, int64_t node, int64_t params, int64_t words,
           std::vector<std::vector<int64_t>> copies, py::object key, py::object keep, py::object zeroed,
           std::vector<std::vector<int64_t>> shapes) {
    TORCH_CHECK(shapes.size() == 3, "FastCalls.add: three output shapes (out, h_n, c_n)");
    TORCH_CHECK(node != 0 || copies.size() == 2, "FastCalls.add: a copy-in node, or both copy kernels");
    Entry e{steps, batch, address(exec), address(node), address(params), static_cast<uint64_t*>(address(words)),
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

  size_t size() const { return entries_.size(); }

  // (steps, batch, launches a call) of each entry: 1 (the copies as graph nodes) or 3.
  std::vector<std::array<int64_t, 3>> shapes() const {
    std::vector<std::array<int64_t, 3>> found;
    for (const auto& e : entries_) found.push_back({e.steps, e.batch, e.node != nullptr ? 1 : 3});
    return found;
  }

  py::object call(py::handle input, py::handle hx) {
    PyObject* in = input.ptr();
    if (!THPVariable_CheckExact(in)) return py::none();
    const at::Tensor& given = THPVariable_Unpack(in);
    if (given.scalar_type() != dtype_ || given.device() != device_ || given.dim() != 3 || given.size(2) != input_size_)
      return py::none();
    Entry* e = batch_first_ ? find(given.size(1), given.size(0)) : find(given.size(0), given.size(1));
    if (e == nullptr) return py::none();
    uint64_t h0 = 0, c0 = 0;
    if (!hx.is_none() && !states(hx.ptr(), e->batch, &h0, &c0)) return py::none();
    void* stream = nullptr;
    if (device_.is_cuda()) {
      const auto* guard = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
      if (guard->getDevice() != device_) return py::none();  // the driver acts in the current context
      stream = guard->getStream(device_).native_handle();
    }
    int capturing = 0;
    if (is_capturing_(stream, &capturing) != 0 || capturing != 0) return py::none();
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
    if (!e->zeroed.is_none() && PySet_Clear(e->zeroed.ptr()) != 0) throw py::error_already_set();
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
    move_to_end_(e->key);  // the executor cache's LRU order and hit count, as forward's look-up keeps them
    PyObject* hits = PyList_GET_ITEM(counts_.ptr(), 0);
    PyObject* more = PyNumber_Add(hits, one_.ptr());
    if (more == nullptr) throw py::error_already_set();
    PyList_SetItem(counts_.ptr(), 0, more);  // (steals `more`, releases the old count)

    at::Tensor y = batch_first_ ? outs[0].transpose(0, 1) : outs[0];  // (as forward returns it: a view)
    py::object out = py::reinterpret_steal<py::object>(THPVariable_Wrap(y));
    py::object h_n = py::reinterpret_steal<py::object>(THPVariable_Wrap(outs[1]));
    if (!lstm_) return py::make_tuple(out, h_n);
    py::object c_n = py::reinterpret_steal<py::object>(THPVariable_Wrap(outs[2]));
    return py::make_tuple(out, py::make_tuple(h_n, c_n));
  }

 private:
  Entry* find(int64_t steps, int64_t batch) {
    for (auto& e : entries_)
      if (e.steps == steps && e.batch == batch) return &e;
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
  py::int_ one_{1};
  std::vector<Entry> entries_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<FastCalls>(m, "FastCalls")
      .def(py::init<const at::Tensor&, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    int64_t, py::object, py::list>())
      .def("add", &FastCalls::add)
      .def("__len__", &FastCalls::size)
      .def("shapes", &FastCalls::shapes)
      .def("__call__", &FastCalls::call);
}
