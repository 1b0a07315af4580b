"""grurt.dask.predict: batch scoring over dask arrays, on a real multi-process LocalCluster.

Every result is compared bit for bit (np.array_equal) with local ``model.run`` calls on the
same blocks, and within 1e-5 with one ``model.run`` on the whole batch. The GRU kernels give
a sequence bit for bit the same result in any batch (checked on a GRU-only model), but Dense
layers call OpenBLAS's sgemm, whose summation order depends on the number of rows: a model
with a Dense layer can differ from the whole-batch run in the last bits.
"""
from __future__ import annotations

import functools
import pickle
import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask.core  # noqa: E402

import grurt  # noqa: E402
import grurt.dask  # noqa: E402
from grurt.spec import Dense, ModelSpec, activation  # noqa: E402

from gru_testing import random_gru  # noqa: E402

I = 3


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def last_model():
    """GRU(16) last state -> Dense(2) (softmax): returns (B, 2)."""
    rng = np.random.default_rng(1)
    return grurt.Model(ModelSpec(I, (random_gru(rng, I, 16, return_sequences=False),
                                     Dense(W=rng.normal(size=(2, 16)), b=[0.1, -0.2],
                                           activation=activation("softmax")))))


@pytest.fixture(scope="module")
def seq_model():
    """bidirectional GRU(6) -> GRU(5) -> Dense(4) on every step: returns (B, T, 4)."""
    rng = np.random.default_rng(2)
    return grurt.Model(ModelSpec(I, (random_gru(rng, I, 6, "bidirectional"), random_gru(rng, 12, 5),
                                     Dense(W=rng.normal(size=(4, 5)), b=np.zeros(4)))))


@pytest.fixture(scope="module")
def gru_model():
    """bidirectional GRU(6) -> reverse GRU(5), no Dense: returns (B, T, 5)."""
    rng = np.random.default_rng(3)
    return grurt.Model(ModelSpec(I, (random_gru(rng, I, 6, "bidirectional"), random_gru(rng, 12, 5, "reverse"))))


def batch(B=57, T=11, seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, I)).astype(np.float32)


def blockwise_run(model, x, sizes, lengths=None, **options):
    """What predict computes: model.run on each block, concatenated (here, BLAS on one thread)."""
    bounds = np.cumsum(sizes)[:-1]
    split_lengths = [None] * len(sizes) if lengths is None else np.split(lengths, bounds)
    with grurt.dask.single_blas_thread():
        return np.concatenate([model.run(block, lengths=block_lengths, **options)
                               for block, block_lengths in zip(np.split(x, bounds), split_lengths)])


def assert_scores(out, model, x, sizes, lengths=None):
    assert type(out) is np.ndarray and out.dtype == np.float32
    assert np.array_equal(out, blockwise_run(model, x, sizes, lengths))          # bit for bit
    np.testing.assert_allclose(out, model.run(x, lengths=lengths), rtol=0, atol=1e-5)


# ---- results on the cluster ------------------------------------------------------------------

def test_last_step_model_uneven_chunks(client, last_model):
    x = batch()
    dx = da.from_array(x, chunks=((20, 7, 1, 29), -1, -1))
    y = grurt.dask.predict(last_model, dx)
    assert y.shape == (57, 2) and y.dtype == np.float32
    assert y.chunks == ((20, 7, 1, 29), (2,))
    assert type(y._meta) is np.ndarray and y._meta.ndim == 2 and y._meta.dtype == np.float32
    assert_scores(client.compute(y, sync=True), last_model, x, (20, 7, 1, 29))


def test_sequence_model_with_lengths(client, seq_model):
    x = batch(B=40, T=9, seed=3)
    lengths = np.random.default_rng(4).integers(1, 10, size=40)
    dx = da.from_array(x, chunks=(16, -1, -1))
    y = grurt.dask.predict(seq_model, dx, lengths=da.from_array(lengths, chunks=7))   # rechunked to 16s
    assert y.shape == (40, 9, 4) and y.chunks == ((16, 16, 8), (9,), (4,))
    assert_scores(client.compute(y, sync=True), seq_model, x, (16, 16, 8), lengths)
    # NumPy lengths, and threads= passed on to Model.run
    y = grurt.dask.predict(seq_model, dx, lengths=lengths, threads=2)
    assert_scores(client.compute(y, sync=True), seq_model, x, (16, 16, 8), lengths)


def test_gru_only_model_is_bit_for_bit_the_whole_batch_run(client, gru_model):
    x = batch(B=45, T=10, seed=9)
    lengths = np.random.default_rng(10).integers(1, 11, size=45)
    y = grurt.dask.predict(gru_model, da.from_array(x, chunks=((1, 13, 31), -1, -1)), lengths=lengths)
    assert y.shape == (45, 10, 5)
    assert np.array_equal(client.compute(y, sync=True), gru_model.run(x, lengths=lengths))


def test_rechunks_time_and_features(client, seq_model):
    x = batch(B=30, T=12, seed=5)
    dx = da.from_array(x, chunks=(10, 5, 2))       # time and features split
    y = grurt.dask.predict(seq_model, dx)
    assert y.chunks == ((10, 10, 10), (12,), (4,))
    assert_scores(client.compute(y, sync=True), seq_model, x, (10, 10, 10))


def test_model_reaches_each_worker_once(client, last_model):
    """Count Model constructions (unpickling calls Model(spec)) in each worker process."""
    def install():
        from grurt import model as module
        if not hasattr(module, "_test_constructions"):
            original = module.Model.__new__

            def counting_new(cls, *args, **kwargs):
                module._test_constructions += 1
                return original(cls, *args, **kwargs)
            module.Model.__new__ = staticmethod(counting_new)
        module._test_constructions = 0

    def constructions():
        from grurt import model as module
        return module._test_constructions

    client.run(install)
    x = batch(B=64, seed=6)
    y = grurt.dask.predict(last_model, da.from_array(x, chunks=4))          # 16 blocks
    assert_scores(client.compute(y, sync=True), last_model, x, (4,) * 16)
    counts = client.run(constructions)
    assert 1 <= sum(counts.values()) and max(counts.values()) == 1, counts


# ---- the threaded scheduler (no distributed client) -------------------------------------------

def test_threaded_scheduler(last_model, seq_model):
    x = batch(B=50, seed=7)
    lengths = np.random.default_rng(8).integers(1, 12, size=50)
    dx = da.from_array(x, chunks=9)
    for model in (last_model, seq_model):
        y = grurt.dask.predict(model, dx, lengths=lengths, threads=2)
        assert_scores(y.compute(scheduler="threads"), model, x, dx.chunks[0], lengths)
    # a NumPy input is wrapped
    y = grurt.dask.predict(last_model, x)
    assert_scores(y.compute(scheduler="sync"), last_model, x, y.chunks[0])


# ---- the model is in the graph once -----------------------------------------------------------

def tasks_holding(graph, model):
    """The graph's keys whose task, pickled on its own, carries the model's weights."""
    marker = np.asarray(model.spec.layers[0].W).tobytes()
    return [key for key, task in dict(graph).items() if marker in pickle.dumps(task, protocol=5)]


def _run(model, block):
    return model.run(block)


def test_graph_holds_the_model_once(last_model):
    dx = da.from_array(batch(B=60), chunks=10)                              # 6 blocks
    y = grurt.dask.predict(last_model, dx, lengths=np.full(60, 5))
    graph = dict(y.__dask_graph__())
    holders = tasks_holding(graph, last_model)
    assert len(holders) == 1
    model_key = holders[0]
    blocks = [key for key in graph if isinstance(key, tuple) and key[0] == y.name]
    assert len(blocks) == 6
    for key in blocks:                                                      # every block uses that key
        assert model_key in dask.core.get_dependencies(graph, key)
    # the counter sees a model pickled into every task
    naive = dx.map_blocks(functools.partial(_run, last_model), drop_axis=(1, 2), new_axis=1,
                          chunks=(dx.chunks[0], (2,)), dtype=np.float32)
    assert len(tasks_holding(naive.__dask_graph__(), last_model)) == 6


# ---- bad inputs: InputError when the graph is built --------------------------------------------

@pytest.mark.parametrize("shape", [(11, I), (4, 11, I, 1), (4,)])
def test_wrong_rank(last_model, shape):
    x = da.zeros(shape, chunks=2)
    with pytest.raises(grurt.InputError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        grurt.dask.predict(last_model, x)


def test_single_sequence_message(last_model):
    with pytest.raises(grurt.InputError, match=r"one sequence of shape \(11, 3\)"):
        grurt.dask.predict(last_model, da.zeros((11, I)))


def test_bad_inputs(last_model):
    dx = da.zeros((10, 5, I), chunks=(3, -1, -1))
    with pytest.raises(grurt.InputError, match=r"\(10, 5, 4\) has 4 features per step, the model expects 3"):
        grurt.dask.predict(last_model, da.zeros((10, 5, 4)))
    with pytest.raises(grurt.InputError, match="real numbers"):
        grurt.dask.predict(last_model, dx.astype(complex))
    with pytest.raises(grurt.InputError, match="no time steps"):
        grurt.dask.predict(last_model, da.zeros((10, 0, I)))
    with pytest.raises(grurt.InputError, match=r"lengths must be integers of shape \(10,\)"):
        grurt.dask.predict(last_model, dx, lengths=np.ones(9, int))
    with pytest.raises(grurt.InputError, match="lengths must be integers"):
        grurt.dask.predict(last_model, dx, lengths=da.ones(10, chunks=3))    # float
    with pytest.raises(grurt.InputError, match="between 1 and 5"):
        grurt.dask.predict(last_model, dx, lengths=np.full(10, 6))
    with pytest.raises(grurt.InputError, match="initial_state"):
        grurt.dask.predict(last_model, dx, initial_state=None)
    with pytest.raises(grurt.InputError, match="threads"):
        grurt.dask.predict(last_model, dx, threads=0)
    with pytest.raises(TypeError, match="unexpected run options"):
        grurt.dask.predict(last_model, dx, thread=2)
    with pytest.raises(TypeError, match="grurt.Model"):
        grurt.dask.predict("model.npz", dx)
    # lengths values in a dask array are checked by Model.run in the worker
    y = grurt.dask.predict(last_model, dx, lengths=da.full(10, 6, chunks=5))
    with pytest.raises(grurt.InputError, match="between 1 and 5"):
        y.compute(scheduler="sync")


# ---- one BLAS thread per block ---------------------------------------------------------------

def blas_threads():
    import threadpoolctl
    return {info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"}


def test_blocks_run_on_one_blas_thread(last_model, monkeypatch):
    pytest.importorskip("threadpoolctl")
    seen, run = [], type(last_model).run

    def recording_run(self, *args, **kwargs):
        seen.append(blas_threads())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(type(last_model), "run", recording_run)
    y = grurt.dask.predict(last_model, da.from_array(batch(B=20), chunks=5))
    y.compute(scheduler="threads")
    assert seen == [{1}] * 4


def test_single_blas_thread():
    """Concurrent blocks: the limit holds until the last one ends, then the setting is restored."""
    pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401  (grurt loads SciPy's BLAS; make sure threadpoolctl sees it)
    before = blas_threads()
    assert before, "threadpoolctl found no BLAS"
    inside, entered, release = [], threading.Event(), threading.Event()

    def block():
        with grurt.dask.single_blas_thread():
            entered.set()
            release.wait()
            inside.append(blas_threads())

    with grurt.dask.single_blas_thread():
        assert blas_threads() == {1}
        worker = threading.Thread(target=block)
        worker.start()
        entered.wait()
    # the first block has left; the other is still running: still one thread
    assert blas_threads() == {1}
    release.set()
    worker.join()
    assert inside == [{1}]
    assert blas_threads() == before                                         # restored by the last one



# ---- graphs (issue 11) ------------------------------------------------------------------------

def test_a_graph_of_one_sequence_input_and_one_output(seq_model):
    """A residual graph scores block by block as run() does on each block (bit for bit)."""
    from grurt.graph import Combine, Graph, Input, Node
    gru = seq_model.layers[0]
    nodes = (Node(gru, "x", "a"),
             Node(random_gru(np.random.default_rng(3), gru.output_size, gru.hidden_size, "bidirectional"), "a", "b"),
             Node(Combine("add"), ("a", "b"), "y"))
    model = grurt.Model(Graph((Input("x", I),), nodes, ("y",)))
    x = batch(B=20, seed=9)
    y = grurt.dask.predict(model, da.from_array(x, chunks=7))
    assert_scores(y.compute(scheduler="sync"), model, x, (7, 7, 6))


def test_a_graph_of_several_inputs_is_refused():
    from grurt.graph import Concat, Graph, Input, Node
    rng = np.random.default_rng(4)
    nodes = (Node(random_gru(rng, I, 4, return_sequences=False), "x", "a"), Node(Concat(), ("a", "v"), "y"))
    model = grurt.Model(Graph((Input("x", I), Input("v", 2, "vector")), nodes, ("y",)))
    with pytest.raises(grurt.InputError, match=r"one sequence input and one output; this graph has inputs "
                                               r"\['x', 'v'\] and outputs \['y'\]"):
        grurt.dask.predict(model, batch(B=4))
