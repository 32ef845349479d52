"""fastgrad.torch: autograd's VJPs of custom Functions, modules' gradients and the Monitor,
checked by finite differences (skipped without torch)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import fastgrad as fg  # noqa: E402
import fastgrad.torch  # noqa: E402
from fastgrad.torch import check_function  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA GPU: torch.cuda.is_available() is false")


def _tensor(*shape, seed=0, dtype=torch.float64, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device).requires_grad_(True)


def planted(bug: str | None, size: float = 1e-3):
    """tanh(x @ w) as a custom Function (vmap-able: setup_context, generate_vmap_rule), its
    backward written by hand, with ``bug`` planted in it (an element off by relative ``size``)."""

    class TanhLinear(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, w):
            return torch.tanh(x @ w)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs, output)

        @staticmethod
        def backward(ctx, g):
            x, w, y = ctx.saved_tensors
            s = g * (1 - y * y)
            gx, gw = s @ w.T, x.T @ s
            if bug == "element":
                gw = gw.clone()
                gw[1, 2] *= 1 + size
            elif bug == "negated":
                gx = -gx
            elif bug == "dropped":
                gw = None
            elif bug == "zero":
                gx = torch.zeros_like(gx)
            elif bug == "transposed":
                gw = gw.T.contiguous()
            return gx, gw

    return TanhLinear.apply


class Softplus(torch.autograd.Function):
    """softplus with a hand-written backward, old style (forward with ctx: vmap refuses it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.softplus(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


class MatMul(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(a, b):
        return a @ b

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g @ b.T, a.T @ g


# ------------------------------------------------------------------------- check_function
def test_correct_custom_functions_pass_and_name_their_inputs():
    x, w = _tensor(5, 3), _tensor(3, 3, seed=1)
    report = check_function(planted(None), x, w, seed=0)
    assert report.passed and report.verdict == "pass" and report.kind == "vjp"
    assert {e.label.split(": ")[1].split("[")[0] for e in report.worst} <= {"input0", "input1"}
    assert check_function(Softplus.apply, _tensor(4, 2), seed=0).passed
    assert check_function(MatMul.apply, _tensor(2, 3), _tensor(3, 4, seed=2), seed=0).passed


@pytest.mark.parametrize("bug, where", [("element", "input1[1, 2]"), ("negated", "input0"),
                                         ("dropped", "input1"), ("zero", "input0"),
                                         ("transposed", "input1")])
def test_planted_backward_bugs_fail_where_they_are(bug, where):
    x, w = _tensor(5, 3), _tensor(3, 3, seed=1)
    report = check_function(planted(bug), x, w, seed=0)
    assert report.verdict == "fail" and not report.passed
    assert report.worst[0].label.split(": ")[1].startswith(where)


def test_vmap_and_one_call_per_point_agree_and_the_report_says_which_ran():
    x, w = _tensor(5, 3), _tensor(3, 3, seed=1)
    for bug in (None, "element"):
        vmapped = check_function(planted(bug), x, w, seed=3, batched=True)
        single = check_function(planted(bug), x, w, seed=3, batched=False)
        assert vmapped.verdict == single.verdict
        assert any("torch.func.vmap" in note for note in vmapped.notes)
        assert any("one call per point" in note and "batched=False" in note for note in single.notes)
        failing = [{e.label for e in r.worst if e.score > 1} for r in (vmapped, single)]
        assert failing[0] == failing[1]
        assert (bug is None) == (not failing[0])
        numerical = {e.label: e.numerical for e in single.worst}
        for entry in vmapped.worst:  # the same differences, to within the sums' rounding
            if entry.label in numerical:
                assert entry.numerical == pytest.approx(numerical[entry.label], rel=1e-8)


def test_a_function_vmap_cannot_run_falls_back_and_says_why():
    def item_dependent(x):
        return x * 2.0 if x.sum().item() > 0 else x * 3.0  # data-dependent: vmap raises
    report = check_function(item_dependent, _tensor(4, seed=5), seed=0)
    assert report.passed
    assert any("one call per point" in note and "vmap raised" in note for note in report.notes)


def test_tuple_and_dict_outputs_and_keyword_inputs():
    x, w = _tensor(3, 2), _tensor(2, 2, seed=1)

    def several(x, *, weight):
        return torch.sin(x) @ weight, torch.exp(weight).sum(0)

    report = check_function(several, x, weight=w, seed=0)
    assert report.passed and report.outputs == 3 * 2 + 2 and report.size == 6 + 4
    labels = {e.label.split(": ")[1].split("[")[0] for e in report.worst}
    assert labels <= {"input0", "weight"} and "weight" in labels

    class DictBug(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a, a.sum()

        @staticmethod
        def backward(ctx, g_square, g_sum):
            (a,) = ctx.saved_tensors
            return 2 * a * g_square + 0.999 * g_sum  # the sum's gradient off by 1e-3

    def as_dict(a):
        square, total = DictBug.apply(a)
        return {"square": square, "total": total}

    assert check_function(lambda a: {"square": a * a, "total": a.sum()}, x, seed=0).passed
    summed = check_function(torch.sum, x, kwargs={"dim": 1}, seed=0)  # constants by keyword
    assert summed.passed and summed.outputs == 3
    assert check_function(as_dict, x, seed=0).verdict == "fail"
    given = [{"square": torch.zeros(3, 2, dtype=torch.float64), "total": torch.tensor(1.0)}]
    only_sum = check_function(as_dict, x, cotangents=given, seed=0)
    assert only_sum.verdict == "fail" and len(only_sum.products) == 1


def test_inputs_are_never_modified_and_constants_pass_through():
    x, w = _tensor(4, 3), _tensor(3, 3, seed=1)
    scale = torch.tensor(0.5, dtype=torch.float64)  # no requires_grad: a constant
    before = (x.detach().clone(), w.detach().clone(), x.grad, w.grad)
    report = check_function(lambda x, w, s, k: planted(None)(x, w) * s * k, x, w, scale, 3, seed=0)
    assert report.passed and report.size == 12 + 9
    assert torch.equal(x, before[0]) and torch.equal(w, before[1])
    assert x.grad is None and w.grad is None and x.requires_grad and x.is_leaf


def test_float32_is_judged_in_float32_without_false_alarms_and_float64_on_request():
    x, w = _tensor(6, 4, dtype=torch.float32), _tensor(4, 4, seed=1, dtype=torch.float32)
    for seed in range(3):
        report = check_function(planted(None), x, w, seed=seed)
        assert report.passed, str(report)
        assert report.reports[0].dtype == "float32"
        assert any("float32" in note and "dtype='float64'" in note for note in report.notes)
        # One element off by 1e-2 shows in float32 (30 of 30 seeds when measured); off by 1e-3
        # it shows in about half of them (float32's allowed error is of that order), and in
        # float64 always: below.
        caught = check_function(planted("element", 1e-2), x, w, seed=seed)
        assert caught.verdict == "fail" and caught.worst[0].label.endswith("input1[1, 2]")
    wide = check_function(planted(None), x, w, seed=0, dtype="float64")
    assert wide.passed and wide.reports[0].dtype == "float64"
    assert any("evaluated in torch.float64" in note for note in wide.notes)
    caught = check_function(planted("element"), x, w, seed=0, dtype="float64")
    assert caught.verdict == "fail" and caught.worst[0].label.endswith("input1[1, 2]")


def test_inputs_it_cannot_check_are_refused_before_any_work():
    calls = []

    def counted(x):
        calls.append(1)
        return x * 2

    with pytest.raises(fg.InputError, match="requires grad"):
        check_function(counted, torch.ones(3, dtype=torch.float64))
    with pytest.raises(fg.InputError, match="mix precisions"):
        check_function(lambda a, b: a * b.float(), _tensor(3, dtype=torch.float32),
                       _tensor(3).to(torch.bfloat16).detach().requires_grad_())
    with pytest.raises(fg.InputError, match="mix precisions"):
        check_function(lambda a, b: a * b.double(), _tensor(3), _tensor(3, dtype=torch.float32))
    with pytest.raises(fg.InputError, match="complex"):
        check_function(counted, _tensor(3), method="complex")
    with pytest.raises(fg.InputError, match="unexpected option"):
        check_function(counted, _tensor(3), workers=2)
    assert not calls
    assert check_function(counted, _tensor(3).to(torch.bfloat16).detach().requires_grad_(),
                          dtype="float64", seed=0).passed


def test_import_fastgrad_does_not_import_torch():
    code = "import sys, fastgrad; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@CUDA
def test_check_function_on_cuda_keeps_inputs_on_the_gpu():
    x, w = _tensor(64, 16, device="cuda"), _tensor(16, 16, seed=1, device="cuda")
    report = check_function(planted(None), x, w, seed=0, batched=True)
    assert report.passed and any("vmap on cuda" in note for note in report.notes)
    assert check_function(planted("element"), x, w, seed=0).verdict == "fail"
    assert x.device.type == "cuda"


# ------------------------------------------------------------------------- check_module
class PlantedLinear(torch.nn.Module):
    """x @ weight + bias through planted(bug)'s backward (tanh(x @ W) with the bias folded
    into x as a column of ones would hide it: the bias is added outside)."""

    def __init__(self, fan_in, fan_out, bug=None, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(fan_in, fan_out, generator=generator,
                                                     dtype=torch.float64) / fan_in ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(fan_out, dtype=torch.float64))
        self.bug = bug

    def forward(self, x):
        return planted(self.bug)(x, self.weight) + self.bias


class Net(torch.nn.Module):
    def __init__(self, bug=None):
        super().__init__()
        self.layer1 = PlantedLinear(4, 3, bug)
        self.norm = torch.nn.BatchNorm1d(3, dtype=torch.float64)
        self.layer2 = torch.nn.Linear(3, 2, dtype=torch.float64)
        self.frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)

    def forward(self, x):
        return self.layer2(self.norm(self.layer1(x))) * self.frozen


def _batch(rows=12, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, generator=generator, dtype=torch.float64),
            torch.randn(rows, 2, generator=generator, dtype=torch.float64))


def _state(module):
    """Everything of the module's state, to compare bit for bit."""
    return ([(name, p, p.detach().clone(), p.requires_grad,
              None if p.grad is None else p.grad.clone()) for name, p in module.named_parameters()],
            [(name, b.clone()) for name, b in module.named_buffers()],
            [m.training for m in module.modules()])


def _same_state(module, before):
    params, buffers, modes = _state(module)
    assert modes == before[2]
    for (name, p, value, grad_on, grad), (name0, p0, value0, grad_on0, grad0) in zip(
            params, before[0], strict=True):
        assert name == name0 and p is p0 and torch.equal(value, value0) and grad_on == grad_on0
        assert (grad is None) == (grad0 is None) and (grad is None or torch.equal(grad, grad0))
    for (name, b), (name0, b0) in zip(buffers, before[1], strict=True):
        assert name == name0 and torch.equal(b, b0)


@pytest.mark.parametrize("training", [True, False])
def test_check_module_names_parameters_and_leaves_the_module_as_it_was(training):
    net = Net().train(training)
    X, Y = _batch()
    net.layer2.weight.grad = torch.full_like(net.layer2.weight, 0.25)  # a grad already there
    before = _state(net)
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0, directions=2,
                                   batched=True)
    assert report.passed, str(report)
    assert {g.name for g in report.groups} == {"layer1.weight", "layer1.bias", "norm.weight",
                                               "norm.bias", "layer2.weight", "layer2.bias"}
    _same_state(net, before)
    twin = copy.deepcopy(net)  # what backward() puts in .grad, on a copy of the module
    twin.zero_grad()
    torch.nn.functional.mse_loss(twin(X), Y).backward()
    grads = {name: p.grad for name, p in twin.named_parameters() if p.requires_grad}
    for entry in report.worst:
        name, index = entry.label.split("[")
        index = tuple(int(k) for k in index.rstrip("]").split(","))
        assert entry.analytic == pytest.approx(float(grads[name][index]), rel=1e-10, abs=1e-14)
    # BatchNorm in train mode updates running statistics in place: vmap refuses, one call per point
    assert any(("one call per point" if training else "torch.func.vmap") in n for n in report.notes)


def test_check_module_finds_a_planted_bug_by_its_pytorch_name():
    net = Net("element")
    X, Y = _batch()
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0)
    assert report.verdict == "fail" and report.worst_label == "layer1.weight[1, 2]"


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("error", [ValueError, Interrupt])
def test_state_is_identical_after_the_users_loss_raises(error):
    net = Net().train()
    X, Y = _batch()
    calls = []

    def failing_loss(out, target):
        calls.append(1)
        if len(calls) > 20:  # in the middle of the differences
            raise error("planted")
        return torch.nn.functional.mse_loss(out, target)

    before = _state(net)
    with pytest.raises(fg.LossError if error is ValueError else Interrupt):
        fg.torch.check_module(net, failing_loss, X, Y, seed=0, batched=False)
    _same_state(net, before)


def test_dropout_in_train_mode_is_refused_and_checked_in_eval_mode():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2)).double()
    X, Y = _batch()
    with pytest.raises(fg.InputError, match="1 is Dropout in train mode"):
        fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y)
    assert fg.torch.check_module(net.eval(), torch.nn.functional.mse_loss, X, Y, seed=0).passed


def test_check_module_in_float32_and_in_float64_on_request():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    X, Y = (t.float() for t in _batch())
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0)
    assert report.passed and report.dtype == "float32" and "float32" in report.notes[0]
    wide = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0, dtype="float64")
    assert wide.passed and wide.dtype == "float64"
    assert next(net.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------- Monitor
def test_monitor_never_changes_the_module_or_the_optimizer_and_catches_a_planted_bug():
    X, Y = _batch()
    for bug in (None, "element"):
        net = Net(bug)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        mon = fg.torch.Monitor(net, torch.nn.functional.mse_loss, every=3, sample=6,
                               directions=0, seed=0, on_fail=lambda report: None)
        reports = []
        for _ in range(30):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(X), Y).backward()
            before, moments = _state(net), {k: [t.clone() for t in v.values() if torch.is_tensor(t)]
                                            for k, v in optimizer.state.items()}
            reports.append(mon.step(X, Y))
            _same_state(net, before)
            assert {k: [t.clone() for t in v.values() if torch.is_tensor(t)]
                    for k, v in optimizer.state.items()}.keys() == moments.keys()
            for k, v in optimizer.state.items():
                for t, t0 in zip([t for t in v.values() if torch.is_tensor(t)], moments[k], strict=True):
                    assert torch.equal(t, t0)
            optimizer.step()
        scheduled = [r for r in reports if r is not None]
        assert [r is not None for r in reports] == [k % 3 == 0 for k in range(30)]
        assert mon.seconds > 0 and len(mon.history) == len(scheduled) == 10
        verdicts = [r.verdict for r in scheduled]
        if bug is None:
            assert "fail" not in verdicts
        else:
            # layer1.weight has 12 coordinates; a check samples 1 or 2 of them, so that the
            # rotation reaches [1, 2] within 12 checks at most; with 10 checks and the
            # seeded rotation, it does
            failing = [r for r in scheduled if r.verdict == "fail"]
            assert failing and all(r.worst_label == "layer1.weight[1, 2]" for r in failing)


def test_monitor_on_a_slice_of_the_batch_checks_autograd_there():
    X, Y = _batch(rows=64)
    for bug in (None, "element"):
        net = Net(bug).eval()  # BatchNorm's running statistics: a slice's batch statistics differ
        mon = fg.torch.Monitor(net, torch.nn.functional.mse_loss, every=1, sample=24,
                               directions=0, seed=0, rows=4, on_fail=lambda report: None)
        before = _state(net)
        reports = [mon.step(X, Y) for _ in range(3)]  # no backward: .grad is not read
        _same_state(net, before)
        assert all(r.checked < 35 for r in reports)
        assert any(r.verdict == "fail" for r in reports) == (bug is not None)


def test_monitor_asks_for_backward_first():
    net = Net()
    mon = fg.torch.Monitor(net, torch.nn.functional.mse_loss, every=1)
    with pytest.raises(fg.InputError, match="backward"):
        mon.step(*_batch())


@CUDA
def test_check_module_on_cuda():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double().cuda()
    X, Y = (t.cuda() for t in _batch())
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0)
    assert report.passed and any("cuda" in note for note in report.notes)


def test_batched_auto_keeps_the_faster_way_and_says_so():
    x, w = _tensor(400, 3), _tensor(3, 3, seed=1)
    report = check_function(planted(None), x, w, seed=0, sample=20, directions=1)
    assert report.passed and report.reports[0].checked < report.size
    assert any("torch.func.vmap" in note or ("one call took" in note and "batched='auto'" in note)
               for note in report.notes)
    with pytest.raises(fg.InputError, match="batched must be"):
        check_function(planted(None), x, w, batched="yes")


def test_check_module_with_tied_weights_moves_every_alias():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encode = torch.nn.Linear(4, 3, bias=False, dtype=torch.float64)
            self.decode = torch.nn.Linear(3, 4, bias=False, dtype=torch.float64)
            self.decode.weight = self.encode.weight  # registered twice; x @ Wᵀ @ W

        def forward(self, x):
            return torch.nn.functional.linear(torch.tanh(self.encode(x)), self.decode.weight.T)

    X, _ = _batch()
    net = Tied()
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, X, X, seed=0)
    assert report.passed and [g.name for g in report.groups] == ["encode.weight"]
    torch.nn.functional.mse_loss(net(X), X).backward()  # the gradient through both aliases
    for entry in report.worst:
        index = tuple(int(k) for k in entry.label.split("[")[1].rstrip("]").split(","))
        assert entry.analytic == pytest.approx(float(net.encode.weight.grad[index]), rel=1e-12)


# ------------------------------------------------------------------------- replica
def _mlp():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()


def test_single_points_run_on_a_private_copy_that_agrees_with_functional_call():
    from fastgrad.torch.module import _module_loss
    net = _mlp()
    X, Y = _batch()
    loss, theta, args, _ = _module_loss(net, torch.nn.functional.mse_loss, X, (Y,), None, False, [])
    assert loss.replica is not None and loss.replica.module is not net
    flat = torch.cat([torch.as_tensor(v).ravel() for v in theta.values()])
    point = flat + 1e-3 * torch.arange(flat.numel(), dtype=flat.dtype)
    with torch.no_grad():
        assert float(loss.single(point.clone(), args)) == float(loss.value(point, args))
        changed = flat.clone()
        changed[7] = 0.5
        assert float(loss.changed(flat, 7, 0.5, args)) == float(loss.value(changed, args))
        assert loss.written(flat) is None  # the coordinate was put back
    assert torch.equal(net[0].weight, _mlp()[0].weight)  # the module itself never moved


def test_a_module_that_writes_into_its_own_weights_is_reported_on_the_copy_too():
    class Clamping(torch.nn.Linear):
        def forward(self, x):
            with torch.no_grad():
                self.weight.clamp_(-0.2, 0.2)  # a max-norm constraint applied in forward
            return super().forward(x)

    torch.manual_seed(0)
    net = torch.nn.Sequential(Clamping(4, 2)).double()
    X, Y = _batch()
    before = net[0].weight.detach().clone()
    with pytest.raises(fg.LossError, match="modifies its input"):
        fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0, batched=False)
    assert torch.equal(net[0].weight, before)


def test_a_module_that_cannot_be_copied_is_evaluated_through_functional_call():
    import threading

    net = _mlp()
    net.lock = threading.Lock()  # deepcopy raises on a lock
    X, Y = _batch()
    from fastgrad.torch.module import _module_loss
    loss, *_ = _module_loss(net, torch.nn.functional.mse_loss, X, (Y,), None, False, [])
    assert loss.replica is None
    assert fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0,
                                 batched=False).passed


def test_monitor_copies_the_module_again_when_an_attribute_changes():
    class Tempered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2, dtype=torch.float64)
            self.temperature = 1.0

        def forward(self, x):
            return self.layer(x) / self.temperature

    net = Tempered()
    X, Y = _batch()
    mon = fg.torch.Monitor(net, torch.nn.functional.mse_loss, every=1, sample=6, directions=1,
                           seed=0, on_fail="raise", batched=False)
    copies = []
    for temperature in (1.0, 1.0, 0.25, 0.25):  # annealed by the training loop
        net.temperature = temperature
        net.zero_grad()
        torch.nn.functional.mse_loss(net(X), Y).backward()
        assert mon.step(X, Y).verdict != "fail"  # on_fail="raise" would have raised
        copies.append(mon._replica)
    assert copies[0] is copies[1] and copies[2] is not copies[1] and copies[2] is copies[3]


# ------------------------------------------------------------------------- kinks: a CNN
def _cnn(seed, dtype, bug=None):
    """Conv-ReLU-MaxPool twice, then a hand-written linear head (PlantedLinear)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), PlantedLinear(32, 3, bug, seed=seed)).to(dtype)


def _images(seed, dtype, rows=6):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 1, 14, 14, generator=generator, dtype=dtype),
            torch.randint(0, 3, (rows,), generator=generator))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_relu_max_pooling_cnn_is_no_false_alarm(dtype):
    """Directions through every weight cross kinks of ReLU and max-pooling (float64 warned on
    9 of 10 seeds before the kink and convergence allowances; float32 failed 10 of 10 before a
    float32 check that does not pass was judged with float64 differences)."""
    for seed in range(4):
        X, Y = _images(seed, dtype)
        for sample in (None, 40):
            report = fg.torch.check_module(_cnn(seed, dtype), torch.nn.functional.cross_entropy,
                                           X, Y, seed=seed, sample=sample, directions=2)
            # float64: the kinks are resolved (before: 9 of 10 seeds warned); float32 may warn
            assert report.verdict == ("pass" if dtype == torch.float64 else report.verdict) \
                and report.verdict != "fail", str(report)
            if dtype == torch.float32 and report.dtype == "float64":
                assert any("against the float32 gradient" in note for note in report.notes)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_planted_bug_behind_the_cnns_kinks_still_fails(dtype):
    for seed in range(2):
        X, Y = _images(seed, dtype)
        report = fg.torch.check_module(_cnn(seed, dtype, "element"),
                                       torch.nn.functional.cross_entropy, X, Y, seed=seed)
        assert report.verdict == "fail" and report.worst_label == "7.weight[1, 2]", str(report)


# ------------------------------------------------------------------------- bfloat16, float16
@pytest.mark.parametrize("narrow", [torch.bfloat16, torch.float16])
def test_narrow_precisions_are_judged_against_float64_differences_in_their_own_rounding(narrow):
    """The VJP autograd computes in bfloat16 (u = 2^-7), judged against float64 differences
    with its rounding allowed for, z·u·(|g_i| + max|g|) ≈ 0.09·(|g_i| + max|g|): a correct one
    is not failed, one element off by a relative 50 % fails (10 % is within that allowance
    here); the report says which precision judged what."""
    x = _tensor(6, 4).to(narrow).detach().requires_grad_()
    w = _tensor(4, 4, seed=1).to(narrow).detach().requires_grad_()
    name = str(narrow).removeprefix("torch.")
    for seed in range(3):
        report = check_function(planted(None), x, w, seed=seed)
        assert report.passed, str(report)
        assert report.reports[0].dtype == "float64"  # the differences'
        assert any(f"{name} tensors" in note and "float64 differences" in note
                   for note in report.notes)
        caught = check_function(planted("element", 0.5), x, w, seed=seed)
        assert caught.verdict == "fail" and caught.worst[0].label.endswith("input1[1, 2]")
    assert x.dtype == narrow and x.grad is None  # the inputs as they were

    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).to(narrow)
    X, Y = (t.to(narrow) for t in _batch())
    assert fg.torch.check_module(net, torch.nn.functional.mse_loss, X, Y, seed=0).passed
    assert next(net.parameters()).dtype == narrow
    mon = fg.torch.Monitor(net, torch.nn.functional.mse_loss, every=1, sample=8, directions=1,
                           seed=0, rows=6, on_fail="raise")
    assert mon.step(X, Y).passed


def test_a_leaky_relu_mlp_whose_directions_cross_kinks_is_no_false_alarm():
    """Found by an independent stress run (11 models, 10 seeds, 3 precisions): this seed's
    float32 check, judged again in float64, failed on a direction through LeakyReLU kinks
    that localising tests 'reproduced' on a predicted truncation alone and nothing named."""
    nn = torch.nn
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(20, 32), nn.LeakyReLU(), nn.Linear(32, 32), nn.LeakyReLU(),
                        nn.Linear(32, 5))
    x, y = torch.randn(16, 20), torch.randn(16, 5)
    report = fg.torch.check_module(net, torch.nn.functional.mse_loss, x, y, seed=5, sample=64,
                                   directions=2)
    assert report.verdict != "fail", str(report)


def test_a_first_layer_weight_with_kinks_on_both_sides_within_the_step_is_unresolved():
    """Found by a full check of a LeNet-style CNN (float64, seed 0): 0.weight[14, 0, 2, 4] has
    ReLU/max-pool kinks on both sides within 2h, so no one-sided value is clean and D(h),
    D(2h) err alike (-1.62e-4, score 4: a false failure).  At h/16 the central difference
    agrees: unresolved (warn), not failed."""
    import numpy as np

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10))
    x, t = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    report = fg.torch.check_module(net.double(), torch.nn.functional.cross_entropy, x.double(), t,
                                   sample=np.array([14 * 25 + 2 * 5 + 4]), seed=0)
    assert report.verdict == "warn" and report.worst[0].status == "unresolved", str(report)
