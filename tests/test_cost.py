"""Exit-path costs (`s2dnas_tf.cost`): FLOPs, and TFLite / SavedModel op times measured once
and looked up.

No speed is asserted: the tests check what is measured, what is looked up instead, what is
free, and how the per-op times add up to exit paths."""

import json

import keras
import numpy as np
import pytest

import s2dnas_tf as s2d
from s2dnas_tf import cost, export, rewriter
from s2dnas_tf import graph as graph_lib
from s2dnas_tf.flops import count_flops


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    images = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(images)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    y = keras.layers.ReLU(name="conv_relu")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(images, keras.layers.Dense(4, name="logits")(x), name="tiny")


def _table(tmp_path):
    return cost.OpTimeTable(path=str(tmp_path / "ops.json"), repeats=5, warmup=1)


def test_op_signature_ignores_names_and_initialisers_not_shapes_or_config():
    a = keras.layers.Conv2D(8, 3, name="a", kernel_initializer="zeros")
    b = keras.layers.Conv2D(8, 3, name="b")
    assert cost.op_signature(a, [(8, 8, 3)]) == cost.op_signature(b, [(8, 8, 3)])
    assert cost.op_signature(a, [(8, 8, 3)]) != cost.op_signature(a, [(16, 16, 3)])
    assert cost.op_signature(a, [(8, 8, 3)]) != cost.op_signature(
        keras.layers.Conv2D(16, 3), [(8, 8, 3)])
    assert json.loads(cost.op_signature(a, [(8, 8, 3)]))["class"] == "Conv2D"


def test_each_op_is_measured_once_then_read_from_the_cache(tmp_path):
    table = _table(tmp_path)
    first = table.op_ms(keras.layers.Conv2D(8, 3, name="one"), [(8, 8, 3)])
    assert table.measured == 1 and first >= 0.0
    # Another layer of the same configuration and shapes: looked up, not measured.
    assert table.op_ms(keras.layers.Conv2D(8, 3, name="two"), [(8, 8, 3)]) == first
    assert table.measured == 1
    table.op_ms(keras.layers.Conv2D(8, 3), [(16, 16, 3)])
    assert table.measured == 2
    table.save()
    again = _table(tmp_path)
    assert again.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)]) == first
    assert again.measured == 0 and again.invoke_ms == table.invoke_ms
    # Another thread count is another machine set-up: its cache starts empty.
    other = cost.OpTimeTable(path=str(tmp_path / "ops.json"), threads=2, repeats=5, warmup=1)
    assert other.ops == {}


def test_tables_saved_side_by_side_merge_and_the_first_time_saved_wins(tmp_path):
    """Two searches sharing one cache file: each save merges with what the other saved, so
    neither loses the other's ops, and an op both measured keeps one time for everyone."""
    a, b = _table(tmp_path), _table(tmp_path)
    shared_a = a.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)])
    a.op_ms(keras.layers.Conv2D(4, 3), [(8, 8, 3)])
    b.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)])
    b.ops[cost.op_signature(keras.layers.Conv2D(8, 3), [(8, 8, 3)])] = shared_a + 1.0
    b.op_ms(keras.layers.Conv2D(2, 3), [(8, 8, 3)])
    a.save()
    b.save()
    assert b.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)]) == shared_a  # a saved it first
    again = _table(tmp_path)
    for filters in (8, 4, 2):
        again.op_ms(keras.layers.Conv2D(filters, 3), [(8, 8, 3)])
    assert again.measured == 0
    assert again.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)]) == shared_a


def test_tflite_paths_add_the_stages_op_times_once_each(tmp_path):
    model = _tiny()
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=2).default_arch())
    table = _table(tmp_path)
    paths = cost.exit_path_costs(net, "tflite", table)
    assert len(paths) == 2 and table.invoke_ms <= paths[0] <= paths[1]
    measured = table.measured
    # The folded net's ops: folded BatchNorms are gone; ReLUs after a conv or an addition
    # are fused; everything else was measured once per distinct signature.
    assert 0 < measured <= len(net.layers)
    assert cost.exit_path_costs(net, "tflite", table) == paths
    assert table.measured == measured
    # The static model: one path, the same table.
    assert cost.static_cost(model, "tflite", table) > table.invoke_ms


def test_fused_and_free_layers_cost_nothing(tmp_path):
    table = _table(tmp_path)
    graph = graph_lib.trace(_tiny())
    times = {node.name: ms for node, ms in zip(
        graph.nodes, cost._node_ms(graph, table).values())}
    assert times["stem_bn"] == 0.0  # folded into the stem's kernel, as the export deploys it
    assert times["stem_relu"] == 0.0 and times["conv_relu"] == 0.0
    # Fused means never timed (a ReLU alone can time as ~0 after the invoke time anyway).
    timed = [json.loads(key) for key in table.ops if key != "__invoke__"]
    assert {op["class"] for op in timed} == {"Conv2D", "Add", "GlobalAveragePooling2D",
                                            "Dense"}, timed
    # The stem is timed as the folded convolution: with a bias.
    assert all(op["config"]["use_bias"] for op in timed if op["class"] == "Conv2D")


def test_paths_are_read_off_the_unfolded_net_as_the_folded_one_deploys(tmp_path):
    """The costs of a net and of its BatchNorm-folded copy (what the export deploys) are the
    same ops, looked up under the same signatures: nothing new is measured the second time."""
    model = _tiny()
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=2).default_arch())
    table = _table(tmp_path)
    paths = cost.exit_path_costs(net, "tflite", table)
    measured = table.measured
    assert cost.exit_path_costs(export.fold_batchnorm(net), "tflite", table) == paths
    assert table.measured == measured


def test_saved_model_paths_time_tensorflow_calls_in_their_own_cache(tmp_path):
    """The "saved_model" cost: the same per-layer sum, each layer timed as a TensorFlow
    concrete function; its table is its own (another runtime's cache is not read) and is
    refused for another cost."""
    model = _tiny()
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=2).default_arch())
    path = str(tmp_path / "ops.json")
    tflite = cost.OpTimeTable(path=path, repeats=5, warmup=1)
    tflite.op_ms(keras.layers.Conv2D(8, 3), [(8, 8, 3)])
    tflite.save()
    table = cost.OpTimeTable(path=path, repeats=5, warmup=1, runtime="saved_model")
    assert table.runtime == "saved_model" and table.ops == {}  # the TFLite times are not its
    paths = cost.exit_path_costs(net, "saved_model", table)
    assert len(paths) == 2 and table.invoke_ms <= paths[0] <= paths[1]
    assert all(np.isfinite(paths)) and table.measured > 0
    table.save()
    again = cost.OpTimeTable(path=path, repeats=5, warmup=1, runtime="saved_model")
    assert cost.exit_path_costs(net, "saved_model", again) == paths and again.measured == 0
    with pytest.raises(ValueError, match="needs an OpTimeTable of that runtime"):
        cost.exit_path_costs(net, "tflite", table)
    with pytest.raises(ValueError, match="runtime must be one of"):
        cost.OpTimeTable(path=path, runtime="gpu")
    with pytest.raises(ValueError, match="op pool"):
        cost.OpTimeTable(path=path, runtime="saved_model", threads=10_000)


def test_flops_paths_are_the_stage_flops():
    model = _tiny()
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=2).default_arch())
    assert cost.exit_path_costs(net) == [float(f) for f in rewriter.stage_flops(net)]
    assert cost.static_cost(model) == float(count_flops(model))


def test_unknown_cost_and_bad_table_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cost must be one of"):
        cost.exit_path_costs(_tiny(), "gpu")
    with pytest.raises(ValueError, match="threads and repeats must be >= 1"):
        cost.OpTimeTable(path=str(tmp_path / "x.json"), threads=0)
    assert np.isfinite(cost.static_cost(_tiny()))
