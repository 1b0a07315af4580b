"""The plans of one GRU / grurt.Chain / grurt.MaskedGRU node share one prepared grurt.Model (its kernels'
plan and packed weights: ``grurt.ops.recurrent.SHARED``) across input signatures, stream graphs, models of
the same graph and threads; the reduced-precision forms share theirs per mode.

Exactness: sharing changes no arithmetic, so every output is held to ``np.array_equal`` against the same
graph planned with a cache of its own (``fresh``: nothing shared, each plan builds its Models, as before
sharing existed). The outputs are also checked against PyTorch (``ATOL``) so that "the same bits" are the
right ones.
"""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import grurt
from grurt import spec
from grurt.ops import recurrent
from grurt.tensor_graph import TensorGraph, TensorInput, TensorNode
from grurt.chain_runner import ChainRunner
from grurt.tensor_model import TensorModel

from tolerances import ATOL

torch = pytest.importorskip("torch")

BATCHES = (1, 2, 3, 5)


class _Tagger(torch.nn.Module):
    def __init__(self, features=6, hidden=9, classes=4):
        super().__init__()
        self.gru = torch.nn.GRU(features, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):                             # a running sum of the input: a general graph
        y, _ = self.gru(x)
        return self.head(y) + x[..., :4].cumsum(1)


def _tagger(seed):
    torch.manual_seed(seed)
    module = _Tagger().eval()
    model = grurt.from_torch(module, torch.randn(2, 7, 6))
    assert isinstance(model, TensorModel)
    return module, model


def _inputs(batch, steps=7, seed=0):
    return np.random.default_rng(seed + batch).standard_normal((batch, steps, 6)).astype(np.float32)


def _models(plan):
    """The Models the plan's steps run on."""
    found = []
    for _, ctx, *_ in plan.steps:
        model = getattr(ctx, "model", None)
        if isinstance(ctx, tuple) and isinstance(ctx[0], list):        # a GRU run through Model.run
            found += ctx[0]
        elif isinstance(model, ChainRunner):
            found.append(model)
    return found


def _fresh(graph, weights="float32", monkeypatch=None):
    """``graph``'s outputs at BATCHES with nothing shared: a cache of Models of its own."""
    monkeypatch.setattr(recurrent, "SHARED", recurrent._SharedModels())
    model = TensorModel(graph, weights=weights)
    return [model.run(_inputs(b)) for b in BATCHES]


def test_plans_of_several_shapes_share_one_model_and_give_the_same_bits(monkeypatch):
    module, model = _tagger(0)
    model = TensorModel(model.graph)                 # no plan made yet
    got = [model.run(_inputs(b)) for b in BATCHES]
    plans = list(model._plans.values())
    assert len(plans) == len(BATCHES)
    shared = {id(m) for plan in plans for m in _models(plan)}
    assert len(shared) == 1                          # one GRU node: one Model for every signature
    for b, y in zip(BATCHES, got):
        with torch.no_grad():
            assert np.abs(y - module(torch.from_numpy(_inputs(b))).numpy()).max() < ATOL
    for y, want in zip(got, _fresh(model.graph, monkeypatch=monkeypatch)):
        assert np.array_equal(y, want)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_reduced_weights_share_per_mode_and_keep_their_bits(mode, monkeypatch):
    _, base = _tagger(1)
    full = TensorModel(base.graph)
    reduced = full.with_weights(mode)
    y_full = [full.run(_inputs(b)) for b in BATCHES]
    y_reduced = [reduced.run(_inputs(b)) for b in BATCHES]
    models = {m for plan in reduced._plans.values() for m in _models(plan)}
    assert len(models) == 1 and models.pop().weights == mode
    assert {m.weights for plan in full._plans.values() for m in _models(plan)} == {"float32"}
    assert not all(np.array_equal(a, b) for a, b in zip(y_full, y_reduced))      # the modes were not mixed up
    for y, want in zip(y_reduced, _fresh(base.graph, mode, monkeypatch)):
        assert np.array_equal(y, want)


def test_graphs_with_other_weights_of_the_same_shapes_never_share():
    (m1, a), (m2, b) = _tagger(2), _tagger(3)
    x = _inputs(3)
    ya, yb = TensorModel(a.graph).run(x), TensorModel(b.graph).run(x)
    with torch.no_grad():
        assert np.abs(ya - m1(torch.from_numpy(x)).numpy()).max() < ATOL
        assert np.abs(yb - m2(torch.from_numpy(x)).numpy()).max() < ATOL


def test_a_models_entry_goes_with_its_last_plan():
    gc.collect()
    before = len(recurrent.SHARED)
    _, model = _tagger(4)
    model = TensorModel(model.graph)
    for b in BATCHES:
        model.run(_inputs(b))
    assert len(recurrent.SHARED) >= before + 1
    del model
    gc.collect()
    assert len(recurrent.SHARED) <= before


def test_two_threads_planning_different_shapes_at_once_share_and_agree(monkeypatch):
    _, base = _tagger(5)
    for _ in range(3):                                   # several rounds: the race is in the planning
        model = TensorModel(base.graph)
        barrier, results, errors = threading.Barrier(2), {}, []

        def plan(batch):
            try:
                barrier.wait()
                results[batch] = model.run(_inputs(batch))
            except Exception as exc:         # noqa: BLE001 (reported below)
                errors.append(exc)
        threads = [threading.Thread(target=plan, args=(b,)) for b in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len({id(m) for plan_ in model._plans.values() for m in _models(plan_)}) == 1
    want = _fresh(base.graph, monkeypatch=monkeypatch)
    assert np.array_equal(results[2], want[BATCHES.index(2)]) and np.array_equal(results[3], want[BATCHES.index(3)])


def test_a_chain_node_and_its_stream_share_the_model(monkeypatch):
    rng = np.random.default_rng(6)
    layers = (spec.GRU(rng.standard_normal((1, 15, 4)).astype(np.float32) * 0.3,
                       rng.standard_normal((1, 15, 5)).astype(np.float32) * 0.3,
                       np.zeros((1, 30), np.float32)),
              spec.Dense(rng.standard_normal((3, 5)).astype(np.float32), np.zeros(3, np.float32)))
    graph = TensorGraph((TensorInput("x", "float32", ("batch", "time", 4)),),
                        (TensorNode("grurt.Chain", ("x",), ("y",), {"layers": layers}, "chain"),), ("y",))
    model = TensorModel(graph)
    xs = [rng.standard_normal((b, 6, 4)).astype(np.float32) for b in BATCHES]
    got = [model.run(x) for x in xs]
    assert len({id(m) for plan in model._plans.values() for m in _models(plan)}) == 1
    for x, y in zip(xs, got):
        assert np.array_equal(y, grurt.Model.chain(layers).run(x))          # the fused Model's bits
    stream = model.stream(batch=2)
    stream.step(xs[1][:, 0])
    stream_models = {id(m) for plan in stream._runner._plans.values() for m in _models(plan)}
    assert stream_models == {id(m) for plan in model._plans.values() for m in _models(plan)}
    monkeypatch.setattr(recurrent, "SHARED", recurrent._SharedModels())
    assert all(np.array_equal(y, TensorModel(graph).run(x)) for x, y in zip(xs, got))
