"""Side measurement (issue 17): where do the exit paths through stages 2 and 3 lose time?

For a multi-stage net (`s2dnas_tf.transform`) this builds, from the transformed net's own
(BatchNorm-folded) weights, several *realisations* of the same function, exports them
(SavedModel, float TFLite), checks that each computes the transformed net's logits (max abs
difference <= 1e-4 x max(1, |logits|)), and times every exit path against plain thin
networks (width multipliers) in turns, one thread:

- `dyn`     the library's export: `DynamicModule` (nested tf.cond, gather/scatter at batch
            > 1; TFLite `IF`), the path forced by thresholds (0 = exit at stage 1, 2.0 never);
- `seq`     the same stage models called one after the other, no control flow, no exit test;
- `sum`     as seq, each Concatenate + conv replaced by one partial conv per concatenated
            piece (own channels, each earlier stage's channels), summed by an Add;
- `pad`     as seq, every stage's channel slice zero-padded to a multiple of 8 (zero weights,
            zero bias: the same function);
- `sumpad`  both;
- `dynsp`   `DynamicModule` on the sum+pad realisation;
- `unfold`  as seq without BatchNorm folding (SavedModel only; TFLite folds by itself);
- `thin_w`  a plain network at width w (ResNet-20 width_multiplier, MobileNetV2 alpha).

Per-op breakdowns: TFLite by timing every op of the converted models on its own (a one-op
flatbuffer cut from the model, XNNPACK, the fixed cost of an invoke subtracted), SavedModel
from a tf.profiler trace (op time by op type and stage, executor and Python overhead).

Subcommands (each run under 15 minutes on the 2-core machine), from the repository root:

    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py build resnet20
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py time resnet20 tflite 1 A
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py time resnet20 saved 16 A
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py opprof_tflite resnet20
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py opprof_tf resnet20
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py overhead
    PYTHONPATH=. python experiments/results/side/profile_exit_paths.py report

(the same for `mobilenetv2`). Intermediate files go to /tmp/profile_exit_paths; `report`
writes experiments/results/side/profile_exit_paths.md from them.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

OUT = "/tmp/profile_exit_paths"
HERE = os.path.dirname(os.path.abspath(__file__))
NEVER = 2.0  # calibration.NEVER_EXIT
THRESHOLDS = {1: [0.0, 0.0], 2: [NEVER, 0.0], 3: [NEVER, NEVER]}
MOBILENET_RES = int(os.environ.get("PEP_MOBILENET_RES", "160"))

CASES = {
    "resnet20": {
        # name: tokens (None: the space's default) or (tokens, channel_multiple)
        "archs": {"default": None, "rl": [4, 1, 0, 7, 6, 3, 0, 0],
                  "default_m8": (None, 8), "rl_m8": ([4, 1, 0, 7, 6, 3, 0, 0], 8)},
        "thin": [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
    },
    "mobilenetv2": {
        "archs": {"default": None, "default_m8": (None, 8)},
        "thin": [0.35, 0.5, 0.75, 1.0],
    },
}
SEQ_VARIANTS = ("seq", "sum", "pad", "sumpad", "unfold")


def _tf():
    import tensorflow as tf

    from s2dnas_tf import latency

    try:
        latency.set_tf_threads(1)
    except RuntimeError:
        pass
    return tf


# --------------------------------------------------------------------------- models


def base_model(case):
    import keras

    if case == "resnet20":
        return keras.saving.load_model("experiments/checkpoints/cifar10_resnet20.keras")
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(MOBILENET_RES, MOBILENET_RES, 3), alpha=1.0, classes=1000
    )


def thin_model(case, width):
    import keras

    from s2dnas_tf import models

    keras.utils.set_random_seed(1)
    if case == "resnet20":
        base = keras.saving.load_model("experiments/checkpoints/cifar10_resnet20.keras")
        norm = base.get_layer("input_norm")
        thin = models.build_model(
            "resnet20", input_shape=(32, 32, 3), num_classes=10, width_multiplier=width
        )
        mean = np.asarray(norm.mean).reshape(-1)
        var = np.asarray(norm.variance).reshape(-1)
        return models.with_input_normalization(thin, mean, var)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(MOBILENET_RES, MOBILENET_RES, 3), alpha=width,
        classes=1000,
    )


def realise(net, sum_concat=False, multiple=1):
    """The same function as `net` (a transformed, possibly BN-folded net), rebuilt with
    every Concatenate + mixing layer as a sum of partial convolutions (`sum_concat`) and/or
    every computed channel slice zero-padded to a multiple of `multiple`."""
    import keras

    from s2dnas_tf import graph as graph_lib

    g = graph_lib.trace(net, single_output=False)
    layout = {}  # tensor key -> [(real channels, padded channels), ...] (one per piece)
    pieces = {}  # concat output key -> (new input tensors, their layouts)
    for k in g.inputs:
        c = g.tensors[k].shape[-1]
        layout[k] = [(c, c)]

    def rup(c):
        return -(-c // multiple) * multiple

    def expand_rows(kernel, lay, cout_p):
        rows = sum(p for _, p in lay)
        out = np.zeros(kernel.shape[:-2] + (rows, cout_p), kernel.dtype)
        r = p = 0
        for real, padded in lay:
            out[..., p : p + real, : kernel.shape[-1]] = kernel[..., r : r + real, :]
            r += real
            p += padded
        return out

    def pad_vec(v, n, fill=0.0):
        out = np.full((n,), fill, v.dtype)
        out[: v.shape[0]] = v
        return out

    def step(node, inputs):
        layer = node.layer
        name = layer.name if hasattr(layer, "name") else None
        ins = [layout[k] for k in node.inputs]
        if isinstance(layer, keras.layers.Concatenate):
            out = graph_lib.copy_call(node, inputs)
            layout[node.outputs[0]] = [p for lay in ins for p in lay]
            pieces[node.outputs[0]] = (list(inputs), ins)
            return out
        mixing = (
            type(layer) is keras.layers.Conv2D and layer.groups == 1
        ) or type(layer) is keras.layers.Dense
        if mixing:
            (k_in,) = node.inputs
            weights = layer.get_weights()
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else None
            dense = type(layer) is keras.layers.Dense
            cout = kernel.shape[-1]
            cout_p = cout if dense else rup(cout)
            size_key = "units" if dense else "filters"
            bias_p = None if bias is None else pad_vec(bias, cout_p)
            if sum_concat and k_in in pieces:
                tensors, lays = pieces[k_in]
                act = layer.get_config().get("activation")
                parts, r = [], 0
                for i, (t, lay) in enumerate(zip(tensors, lays)):
                    real = sum(a for a, _ in lay)
                    kp = expand_rows(kernel[..., r : r + real, :], lay, cout_p)
                    r += real
                    own = i == len(tensors) - 1
                    w = [kp] + ([bias_p] if (own and bias is not None) else [])
                    part = graph_lib.clone_layer(
                        layer, f"{name}_p{i}", **{size_key: cout_p},
                        use_bias=own and bias is not None, activation="linear",
                    )
                    y = part(t)
                    part.set_weights(w)
                    parts.append(y)
                y = keras.layers.Add(name=name)(parts)
                if act not in (None, "linear"):
                    y = keras.layers.Activation(act, name=f"{name}_act")(y)
                outs = [y]
            else:
                kp = expand_rows(kernel, ins[0], cout_p)
                w = [kp] + ([bias_p] if bias is not None else [])
                outs = graph_lib.copy_call(node, inputs, weights=w, **{size_key: cout_p})
            layout[node.outputs[0]] = [(cout, cout_p)]
            return outs
        if type(layer) is keras.layers.DepthwiseConv2D:
            (lay,) = ins
            assert len(lay) == 1 and layer.depth_multiplier == 1, node.name
            (real, padded) = lay[0]
            weights = layer.get_weights()
            k = np.zeros(weights[0].shape[:2] + (padded, 1), weights[0].dtype)
            k[:, :, :real] = weights[0]
            w = [k] + ([pad_vec(weights[1], padded)] if layer.use_bias else [])
            layout[node.outputs[0]] = [(real, padded)]
            return graph_lib.copy_call(node, inputs, weights=w)
        if type(layer) is keras.layers.BatchNormalization:
            (lay,) = ins
            (real, padded) = lay[0]
            fills = []
            for v in layer.weights:
                n = v.path.split("/")[-1]
                fills.append(1.0 if n in ("gamma", "moving_variance") else 0.0)
            w = [pad_vec(np.asarray(v), padded, f) for v, f in zip(layer.get_weights(), fills)]
            layout[node.outputs[0]] = [(real, padded)]
            return graph_lib.copy_call(node, inputs, weights=w)
        if isinstance(layer, keras.layers.Layer) and layer.weights and not isinstance(
            layer, keras.layers.Normalization
        ):
            raise NotImplementedError(f"{node.name}: {type(layer).__name__}")
        if len({tuple(lay) for lay in ins}) > 1:
            raise AssertionError(f"{node.name} joins different layouts {ins}")
        for k in node.outputs:
            layout[k] = ins[0]
        return graph_lib.copy_call(node, inputs)

    inputs = graph_lib.new_inputs(g)
    values = graph_lib.rebuild(g, step, inputs)
    return keras.Model(
        [inputs[k] for k in g.inputs][0], [values[k] for k in g.outputs], name=net.name
    )


def seq_module(split, upto, image_shape):
    """A tf.Module calling stage models 1..upto in sequence (no control flow)."""
    import tensorflow as tf

    from s2dnas_tf import export

    class Seq(tf.Module):
        def __init__(self):
            super().__init__(name=f"seq{upto}")
            self.stage_models = [st.model for st in split.stages[:upto]]
            spec1 = tf.TensorSpec((1,) + image_shape, tf.float32, name="images")
            specn = tf.TensorSpec((None,) + image_shape, tf.float32, name="images")
            self.serve = tf.function(self._serve, input_signature=[specn], autograph=False)
            self.serve_batch1 = tf.function(
                self._serve, input_signature=[spec1], autograph=False
            )

        def _serve(self, images):
            values = {export.IMAGES_KEY: images}
            out = {}
            for st in split.stages[:upto]:
                o = export.call_stage(st, [values[k] for k in st.input_keys])
                values.update(zip(st.output_keys, o))
                out[f"logits{st.stage}"] = tf.identity(o[0], name=f"logits{st.stage}")
            return out

        def signatures(self):
            return {
                "serving_default": self.serve.get_concrete_function(),
                "serving_batch1": self.serve_batch1.get_concrete_function(),
            }

    return Seq()


def save_module(module, path):
    import shutil

    import tensorflow as tf

    if os.path.exists(path):
        shutil.rmtree(path)
    tf.saved_model.save(module, path, signatures=module.signatures())
    return path


def tflite_from_saved(path, out):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_batch1"]
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], loaded)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with open(out, "wb") as f:
        f.write(conv.convert())
    return out


def tflite_ops(path):
    from s2dnas_tf.export import tflite as tfl

    with open(path, "rb") as f:
        model = tfl._read_tflite(f.read())
    return [[op for op, _, _ in sg["ops"]] for sg in model["subgraphs"]]


def cmd_build(case, parts=("thin", "seq,unfold,sum,pad,sumpad,dyn,dynsp")):
    """Builds, checks and exports the models; `parts`: "thin" and/or comma-separated
    realisations (seq, unfold, sum, pad, sumpad, dyn, dynsp), merged into the manifest."""
    tf = _tf()
    import keras

    import s2dnas_tf as s2d
    from s2dnas_tf import export

    root = f"{OUT}/{case}"
    os.makedirs(root, exist_ok=True)
    mpath = f"{root}/manifest.json"
    if os.path.exists(mpath):
        with open(mpath) as f:
            manifest = json.load(f)
    else:
        manifest = {"case": case, "models": {}, "archs": {}}
    base = base_model(case)
    static_flops = s2d.count_flops(base)
    image_shape = tuple(int(d) for d in base.inputs[0].shape[1:])
    manifest["image_shape"] = image_shape
    manifest["static_flops"] = static_flops
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4,) + image_shape).astype("float32")
    t0 = time.time()

    def save_manifest():
        with open(mpath + ".tmp", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(mpath + ".tmp", mpath)

    def check(name, got, ref):
        err = float(np.max(np.abs(np.asarray(got) - np.asarray(ref))))
        tol = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
        manifest["models"].setdefault(name, {}).setdefault("checks", []).append(
            [err, tol]
        )
        if not err <= tol:
            raise AssertionError(f"{name}: max abs diff {err} > {tol}")
        return err

    if "thin" in parts:
        for width in CASES[case]["thin"]:
            m = thin_model(case, width)
            name = f"thin_{width}"
            saved = export.export_static(m, f"{root}/saved", name, overwrite=True)
            tfl = export.convert_to_tflite(saved, f"{root}/{name}.tflite")
            manifest["models"][name] = {
                "kind": "thin", "width": width, "flops": s2d.count_flops(m) / static_flops,
                "saved": saved, "saved_sig": "static", "tflite": tfl, "path": None,
                "tflite_ops": tflite_ops(tfl),
            }
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        save_manifest()
    frozen = [p for p in parts if p.startswith("frozen")]
    if frozen:
        kinds = frozen[0].split("=", 1)[1].split(",") if "=" in frozen[0] else FROZEN_KINDS
        freeze_all(manifest, root, x, check, kinds)
        save_manifest()
        return
    wanted = [v for p in parts if p != "thin" for v in p.split(",") if ":" not in v]
    only = [p.split(":", 1)[1] for p in parts if p.startswith("arch:")]
    if not wanted:
        return
    for arch_name, tokens in CASES[case]["archs"].items():
        if only and arch_name not in only:
            continue
        multiple = 1
        if isinstance(tokens, tuple):
            tokens, multiple = tokens
        space = s2d.SearchSpace.from_model(base, num_stages=3, channel_multiple=multiple)
        arch = space.default_arch() if tokens is None else space.decode(tokens)
        net = s2d.transform(base, arch)
        ref = [np.asarray(o) for o in net(x)]
        flops = [f / static_flops for f in s2d.stage_flops(net)]
        manifest["archs"][arch_name] = {
            "tokens": arch.tokens, "table": space.channel_table(arch), "flops": flops,
        }
        folded = export.fold_batchnorm(net)
        builders = {
            "seq": lambda: folded,
            "unfold": lambda: net,
            "sum": lambda: realise(folded, sum_concat=True),
            "pad": lambda: realise(folded, multiple=8),
            "sumpad": lambda: realise(folded, sum_concat=True, multiple=8),
        }
        needed = {v for v in wanted if v in builders}
        if {"dyn", "dynnl", "split"} & set(wanted):
            needed.add("seq")
        if "dynsp" in wanted:
            needed.add("sumpad")
        nets = {v: builders[v]() for v in builders if v in needed}
        for vname, vnet in nets.items():
            for s, (got, r) in enumerate(zip(vnet(x), ref), 1):
                check(f"{arch_name}_{vname}_keras{s}", got, r)
        splits = {v: export.split_stages(n) for v, n in nets.items()}
        for vname, split in splits.items():
            if vname not in wanted:
                continue
            for s in (1, 2, 3):
                if vname in ("sum", "sumpad") and s == 1:
                    continue  # stage 1 reads no concatenation: the same as seq / pad
                name = f"{arch_name}_{vname}_{s}"
                saved = save_module(seq_module(split, s, image_shape), f"{root}/saved/{name}")
                loaded = tf.saved_model.load(saved)
                out = loaded.signatures["serving_default"](images=tf.constant(x))
                for t in range(1, s + 1):
                    check(name, out[f"logits{t}"], ref[t - 1])
                entry = {
                    "kind": vname, "arch": arch_name, "path": s, "flops": flops[s - 1],
                    "saved": saved, "saved_sig": "seq",
                    "checks": manifest["models"][name]["checks"],
                }
                if vname != "unfold":
                    tfl = tflite_from_saved(saved, f"{root}/{name}.tflite")
                    from ai_edge_litert.interpreter import Interpreter

                    runner = Interpreter(model_path=tfl).get_signature_runner()
                    o = runner(images=x[:1])
                    check(name, o[f"logits{s}"], ref[s - 1][:1])
                    entry["tflite"] = tfl
                    entry["tflite_ops"] = tflite_ops(tfl)
                entry["checks"] = manifest["models"][name]["checks"]
                manifest["models"][name] = entry
            print(f"{arch_name} {vname}: {time.time() - t0:.0f} s", flush=True)
            save_manifest()
        for vname, src in (("dyn", "seq"), ("dynsp", "sumpad")):
            if vname not in wanted:
                continue
            module = export.DynamicModule(splits[src], THRESHOLDS[1])
            saved = export.export_saved_model(
                module, None, f"{root}/saved", f"{arch_name}_{vname}", overwrite=True
            )
            for s in (1, 2, 3):
                name = f"{arch_name}_{vname}_{s}"
                manifest["models"].pop(name, None)
                loaded = tf.saved_model.load(saved)
                out = loaded.signatures["serving_with_thresholds"](
                    images=tf.constant(x), thresholds=tf.constant(THRESHOLDS[s])
                )
                assert (out["exit_stage"].numpy() == s).all(), name
                check(name, out["logits"], ref[s - 1])
                module.thresholds.assign(THRESHOLDS[s])
                tfl = export.convert_to_tflite(module, f"{root}/{name}.tflite")
                from ai_edge_litert.interpreter import Interpreter

                o = Interpreter(model_path=tfl).get_signature_runner()(images=x[:1])
                assert int(o["exit_stage"][0]) == s, name
                check(name, o["logits"], ref[s - 1][:1])
                manifest["models"][name].update({
                    "kind": vname, "arch": arch_name, "path": s, "flops": flops[s - 1],
                    "saved": saved, "saved_sig": "dyn", "thresholds": THRESHOLDS[s],
                    "tflite": tfl, "tflite_ops": tflite_ops(tfl),
                })
            print(f"{arch_name} {vname}: {time.time() - t0:.0f} s", flush=True)
            save_manifest()
        if "dynnl" in wanted:
            # The same DynamicModule, its tf.cond left as a functional If op (TensorFlow
            # lowers it to Switch/Merge by default, whose untaken branch still has every
            # node visited by the executor as "dead").
            from tensorflow.python.ops import control_flow_util_v2

            control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE = True
            try:
                module = export.DynamicModule(splits["seq"], THRESHOLDS[1])
                saved = export.export_saved_model(
                    module, None, f"{root}/saved", f"{arch_name}_dynnl", overwrite=True
                )
            finally:
                control_flow_util_v2._DISABLE_LOWER_USING_SWITCH_MERGE = False
            for s in (1, 2, 3):
                name = f"{arch_name}_dynnl_{s}"
                manifest["models"].pop(name, None)
                loaded = tf.saved_model.load(saved)
                for sig, kw in (("serving_with_thresholds",
                                 {"thresholds": tf.constant(THRESHOLDS[s])}),):
                    out = loaded.signatures[sig](images=tf.constant(x), **kw)
                    assert (out["exit_stage"].numpy() == s).all(), name
                    check(name, out["logits"], ref[s - 1])
                loaded.thresholds.assign(THRESHOLDS[s])
                out = loaded.signatures["serving_batch1"](images=tf.constant(x[:1]))
                check(name, out["logits"], ref[s - 1][:1])
                manifest["models"][name].update({
                    "kind": "dynnl", "arch": arch_name, "path": s, "flops": flops[s - 1],
                    "saved": saved, "saved_sig": "dyn", "thresholds": THRESHOLDS[s],
                })
            print(f"{arch_name} dynnl: {time.time() - t0:.0f} s", flush=True)
            save_manifest()
        if "split" in wanted:
            # Per-stage TFLite models, chained by the caller (no IF): stage s's model reads
            # the images / earlier stages' boundary tensors and returns its logits and the
            # tensors later stages read.
            split = splits["seq"]
            stage_files = []
            for st in split.stages:
                specs = [
                    tf.TensorSpec(
                        (1,) + tuple(image_shape) if k == export.IMAGES_KEY
                        else (1,) + tuple(
                            int(d) for d in st.model.inputs[i].shape[1:]
                        ),
                        tf.float32, name="images" if k == export.IMAGES_KEY else f"in_{k}",
                    )
                    for i, k in enumerate(st.input_keys)
                ]

                def make(st):
                    def fn(*args):
                        outs = export.call_stage(st, list(args))
                        return {f"out_{k}": o for k, o in zip(st.output_keys, outs)}

                    return fn

                fn = make(st)

                holder = tf.Module()
                holder.model = st.model
                holder.f = tf.function(fn, input_signature=specs, autograph=False)
                sdir = f"{root}/saved/{arch_name}_split_stage{st.stage}"
                tf.saved_model.save(holder, sdir, signatures={"serving_default": holder.f})
                # Converted from the SavedModel signature: the weights become constants.
                loaded = tf.saved_model.load(sdir)
                conv = tf.lite.TFLiteConverter.from_concrete_functions(
                    [loaded.signatures["serving_default"]], loaded
                )
                path = f"{root}/{arch_name}_split_stage{st.stage}.tflite"
                with open(path, "wb") as fh:
                    fh.write(conv.convert())
                stage_files.append({
                    "tflite": path, "input_keys": list(st.input_keys),
                    "output_keys": list(st.output_keys),
                })
            for s in (1, 2, 3):
                name = f"{arch_name}_split_{s}"
                entry = {
                    "kind": "split", "arch": arch_name, "path": s, "flops": flops[s - 1],
                    "tflite_stages": stage_files[:s],
                }
                call = split_tflite_call(entry)
                out = call(x[:1])
                check(name, out[f"logits{s}"], ref[s - 1][:1])
                entry["checks"] = manifest["models"][name]["checks"]
                entry["tflite_ops"] = [tflite_ops(e["tflite"])[0] for e in stage_files[:s]]
                manifest["models"][name] = entry
            print(f"{arch_name} split: {time.time() - t0:.0f} s", flush=True)
            save_manifest()
        keras.backend.clear_session()
    save_manifest()
    print(f"{len(manifest['models'])} models in the manifest, {time.time() - t0:.0f} s")


FROZEN_KINDS = ("thin", "seq", "sum", "pad", "dyn", "dynnl")


def frozen_name(name):
    """thin_0.5 -> fzthin_0.5; default_dyn_2 -> default_dynfz_2."""
    if name.startswith("thin_"):
        return "fz" + name
    head, s = name.rsplit("_", 1)
    return f"{head}fz_{s}"


def freeze_all(manifest, root, x, check, kinds=FROZEN_KINDS):
    """A twin of each SavedModel with its variables frozen into constants
    (`convert_variables_to_constants_v2` of each signature; a dynamic model's thresholds
    become constants too): a loaded signature's call passes every captured variable as an
    input, a cost per variable on every call."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    for name, entry in list(manifest["models"].items()):
        if entry.get("kind") not in kinds or "saved" not in entry:
            continue
        loaded = tf.saved_model.load(entry["saved"])
        if entry["saved_sig"] == "dyn":
            loaded.thresholds.assign(entry["thresholds"])
        sigs = {}
        for sig, batch in (("serving_batch1", x[:1]), ("serving_default", x)):
            fn = loaded.signatures[sig]
            sigs[sig] = convert_variables_to_constants_v2(fn)
        module = tf.Module()
        path = f"{root}/saved_frozen/{frozen_name(name)}"
        tf.saved_model.save(module, path, signatures=sigs)
        again = tf.saved_model.load(path)
        for sig, batch in (("serving_batch1", x[:1]), ("serving_default", x)):
            a = loaded.signatures[sig](images=tf.constant(batch))
            b = again.signatures[sig](images=tf.constant(batch))
            for i, k in enumerate(sorted(a)):
                check(frozen_name(name), b[f"output_{i}"], a[k])
        fz = frozen_name(name)
        manifest["models"][fz] = {
            **{k: v for k, v in entry.items() if k not in ("tflite", "tflite_ops", "checks")},
            "kind": entry["kind"] + "fz", "saved": path, "saved_sig": "frozen",
            "captured": len(loaded.signatures["serving_batch1"].captured_inputs),
            "checks": manifest["models"][fz]["checks"],
        }
        print(f"frozen {name}", flush=True)


def split_tflite_call(entry, threads=1):
    """Runs per-stage TFLite models one after the other, handing boundary tensors on
    (numpy copies, as an app calling separate models would)."""
    from ai_edge_litert.interpreter import Interpreter

    from s2dnas_tf import export

    runners = []
    for st in entry["tflite_stages"]:
        it = Interpreter(model_path=st["tflite"], num_threads=threads)
        runners.append((it, it.get_signature_runner(), st))

    def call(x):
        values = {export.IMAGES_KEY: x}
        out = {}
        for _, runner, st in runners:
            kwargs = {
                ("images" if k == export.IMAGES_KEY else f"in_{k}"): values[k]
                for k in st["input_keys"]
            }
            res = runner(**kwargs)
            for k in st["output_keys"]:
                values[k] = res[f"out_{k}"]
            out[f"logits{len(out) + 1}"] = res[f"out_{st['output_keys'][0]}"]
        return out

    return call


# --------------------------------------------------------------------------- timing


def load_manifest(case):
    """The manifest with "models" holding the built models only and "checks" every
    numerical check ([max abs diff, tolerance])."""
    with open(f"{OUT}/{case}/manifest.json") as f:
        man = json.load(f)
    man["checks"] = [c for v in man["models"].values() for c in v.get("checks", [])]
    man["models"] = {k: v for k, v in man["models"].items() if "kind" in v}
    return man


def saved_call(tf, entry, batch):
    loaded = tf.saved_model.load(entry["saved"])
    if entry["saved_sig"] == "dyn":
        loaded.thresholds.assign(entry["thresholds"])
    sig = "serving_batch1" if batch == 1 else "serving_default"
    fn = loaded.signatures[sig]
    # keep `loaded` alive with the function
    return (lambda x, fn=fn, keep=loaded: fn(images=tf.constant(x)))


def tflite_call(entry):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=entry["tflite"], num_threads=1)
    runner = interp.get_signature_runner("serving_default")
    return lambda x, r=runner, keep=interp: r(images=x)


def cmd_time(case, runtime, batch, tag, n=None, kinds=None):
    tf = _tf()
    from s2dnas_tf import latency

    man = load_manifest(case)
    shape = tuple(man["image_shape"])
    models = {
        k: v for k, v in man["models"].items()
        if ("saved" in v if runtime == "saved" else ("tflite" in v or "tflite_stages" in v))
    }
    if kinds:
        models = {k: v for k, v in models.items() if v["kind"] in kinds}
    calls = {}
    for name, entry in models.items():
        if runtime == "saved":
            calls[name] = saved_call(tf, entry, batch)
        elif "tflite_stages" in entry:
            calls[name] = split_tflite_call(entry)
        else:
            calls[name] = tflite_call(entry)
    if n is None:
        n = {("resnet20", "tflite"): 2000, ("resnet20", "saved"): 800 // batch ** 0.5}.get(
            (case, runtime), 150 // batch ** 0.5
        )
    n = max(int(n), 10)
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 255, (batch,) + shape).astype("float32") for _ in range(n)]
    # Small rounds (about a second for all models): the machine's load changes within
    # seconds, and each model should see the same mix of it.
    chunk = {("resnet20", 1): 10, ("resnet20", 16): 2, ("mobilenetv2", 1): 3}.get(
        (case, batch), 1
    )
    warm = min(10, n)
    begin = time.time()
    load = os.getloadavg()
    timed = latency.time_interleaved(calls, images, warmup=warm, chunk=chunk)
    result = {
        "case": case, "runtime": runtime, "batch": batch, "tag": tag, "n": n,
        "loadavg_before": load, "loadavg_after": os.getloadavg(),
        "seconds": time.time() - begin, "started": time.strftime("%H:%M:%S"),
        "models": {k: v[0] for k, v in timed.items()},
    }
    for name, (stats, outs, ms) in timed.items():
        o = outs[0]
        if "exit_stage" in o:
            stages = np.concatenate([np.asarray(q["exit_stage"]).reshape(-1) for q in outs])
            path = models[name].get("path")
            if path is not None:
                assert (stages == path).all(), (name, np.unique(stages))
        result["models"][name]["trimmed_mean_ms"] = float(
            np.mean(np.sort(ms)[: int(len(ms) * 0.9)])
        )
    out = f"{OUT}/{case}/time_{runtime}_b{batch}_{tag}.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out} ({result['seconds']:.0f} s, load {load} -> {os.getloadavg()})")
    summary(case, result)


def thin_reference(thin_points, flops):
    """Time of a thin net of `flops`: linear interpolation (extrapolation at the ends)
    over the thin nets' (FLOPs, time) points."""
    pts = sorted(thin_points)
    fs = np.array([p[0] for p in pts])
    ts = np.array([p[1] for p in pts])
    i = int(np.clip(np.searchsorted(fs, flops) - 1, 0, len(fs) - 2))
    return float(ts[i] + (ts[i + 1] - ts[i]) * (flops - fs[i]) / (fs[i + 1] - fs[i]))


def thin_points(man, models, name, key="median_ms"):
    """The (FLOPs, time) of the thin nets `name` is compared with: the frozen thin nets
    for a frozen model, the plain ones otherwise."""
    prefix = "fzthin_" if man["models"][name]["kind"].endswith("fz") else "thin_"
    return [(man["models"][k]["flops"], v[key]) for k, v in models.items()
            if k.startswith(prefix)]


def summary(case, result, key="median_ms"):
    man = load_manifest(case)
    models = result["models"]
    print(f"{case} {result['runtime']} batch {result['batch']} ({key})")
    for k, v in models.items():
        e = man["models"][k]
        ref = thin_reference(thin_points(man, models, k, key), e["flops"])
        print(f"  {k:18s} flops {e['flops']:.3f}  {v[key]:8.3f} ms  x thin {v[key] / ref:.2f}")


# --------------------------------------------------------------------------- TFLite ops


def _op_model(model, sg_index, op_index):
    """A one-op TFLite flatbuffer: op `op_index` of subgraph `sg_index` of `model` (ModelT),
    its non-constant inputs as graph inputs."""
    import copy

    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fu

    sg = model.subgraphs[sg_index]
    op = sg.operators[op_index]
    used = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
    remap, tensors, buffers, inputs = {}, [], [fb.BufferT()], []
    for t in used:
        if t in remap:
            continue
        tensor = copy.copy(sg.tensors[t])
        buf = model.buffers[tensor.buffer]
        if tensor.buffer and (buf.data is not None and len(buf.data)):
            buffers.append(buf)
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
            if t in op.inputs:
                inputs.append(len(tensors))
        remap[t] = len(tensors)
        tensors.append(tensor)
    new_op = copy.copy(op)
    new_op.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
    new_op.outputs = [remap[t] for t in op.outputs]
    new_sg = fb.SubGraphT()
    new_sg.tensors = tensors
    new_sg.operators = [new_op]
    new_sg.inputs = inputs
    new_sg.outputs = [remap[t] for t in op.outputs]
    new_sg.name = "op"
    m = fb.ModelT()
    m.version = model.version
    m.operatorCodes = model.operatorCodes
    m.subgraphs = [new_sg]
    m.buffers = buffers
    m.description = "one op"
    return bytes(fu.convert_object_to_bytearray(m))


def _time_invokes(interps, rounds=7, target_s=0.004):
    """Per-invoke seconds of each interpreter: loops sized to ~target_s, `rounds` rounds in
    turns, the median of the rounds."""
    loops = []
    for it in interps:
        it.invoke()
        b = time.perf_counter()
        it.invoke()
        one = max(time.perf_counter() - b, 1e-6)
        loops.append(int(min(max(target_s / one, 3), 2000)))
    res = [[] for _ in interps]
    for _ in range(rounds):
        for i, it in enumerate(interps):
            inv = it.invoke
            b = time.perf_counter()
            for _ in range(loops[i]):
                inv()
            res[i].append((time.perf_counter() - b) / loops[i])
    return [float(np.median(r)) for r in res]


def op_category(op):
    return {
        "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "dense",
        "CONCATENATION": "concat", "ADD": "add", "MEAN": "pool", "PAD": "pad",
        "IF": "IF", "SOFTMAX": "exit test", "REDUCE_MAX": "exit test",
        "GREATER_EQUAL": "exit test", "LOGICAL_NOT": "exit test", "RESHAPE": "reshape",
        "RELU": "act", "RELU6": "act", "RELU_0_TO_1": "act", "FILL": "exit test",
        "SELECT": "exit test", "SELECT_V2": "exit test", "CAST": "exit test",
        "MUL": "mul", "SUB": "sub", "LOG": "other", "MAXIMUM": "other",
    }.get(op, op.lower())


def cmd_opprof_tflite(case, names=None):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fu

    from s2dnas_tf import conventions

    man = load_manifest(case)
    if names is None:
        names = [
            k for k, v in man["models"].items()
            if "tflite" in v and (v["kind"] in ("dyn", "sum", "pad") or k.startswith("thin"))
        ]
    # The fixed cost of one invoke from Python (interpreter + delegate + call): a one-op
    # model of an ADD on 1 float.
    import tensorflow as tf

    tiny_fn = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec([1], tf.float32)])
    tiny = tf.lite.TFLiteConverter.from_concrete_functions(
        [tiny_fn.get_concrete_function()]
    ).convert()
    result = {"case": case, "models": {}, "started": time.strftime("%H:%M:%S"),
              "loadavg": os.getloadavg()}
    rng = np.random.default_rng(2)
    for name in names:
        entry = man["models"][name]
        with open(entry["tflite"], "rb") as f:
            content = f.read()
        model = fu.read_model_from_bytearray(bytearray(content))
        ops, interps = [], []
        for si, sg in enumerate(model.subgraphs):
            for oi, op in enumerate(sg.operators):
                code = fu.get_builtin_code_from_operator_code(
                    model.operatorCodes[op.opcodeIndex]
                )
                opname = fu.opcode_to_name(model, op.opcodeIndex)
                tnames = [
                    sg.tensors[t].name.decode() for t in list(op.outputs) if t >= 0
                ]
                stages = set().union(*map(conventions.stages_in_tensor_name, tnames))
                rec = {"subgraph": si, "op": opname, "stage": max(stages) if stages else 0,
                       "out": tnames[0] if tnames else "", "code": int(code),
                       "in_shapes": [[int(d) for d in sg.tensors[t].shape]
                                     for t in op.inputs if t >= 0],
                       "out_shape": [int(d) for d in sg.tensors[op.outputs[0]].shape]}
                if opname in ("IF", "WHILE"):
                    rec["ms"] = None
                    ops.append(rec)
                    continue
                it = Interpreter(model_content=_op_model(model, si, oi), num_threads=1)
                it.allocate_tensors()
                for d in it.get_input_details():
                    it.set_tensor(
                        d["index"],
                        rng.uniform(0, 1, d["shape"]).astype(d["dtype"])
                        if d["dtype"] != np.bool_ else np.zeros(d["shape"], bool),
                    )
                rec["delegated"] = any(
                    o["op_name"] == "DELEGATE" for o in it._get_ops_details()
                )
                ops.append(rec)
                interps.append((rec, it))
        base_it = Interpreter(model_content=tiny, num_threads=1)
        base_it.allocate_tensors()
        times = _time_invokes([base_it] + [it for _, it in interps])
        fixed = times[0]
        for (rec, _), t in zip(interps, times[1:]):
            rec["ms"] = max(t - fixed, 0.0) * 1000
        result["models"][name] = {"ops": ops, "fixed_invoke_ms": fixed * 1000}
        print(f"{name}: {len(interps)} ops, sum {sum(r['ms'] for r, _ in interps):.3f} ms, "
              f"fixed invoke {fixed * 1e3:.4f} ms", flush=True)
    out = f"{OUT}/{case}/opprof_tflite.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


# --------------------------------------------------------------------------- TF profiler


TF_CATEGORIES = [
    ("Conv2D", "conv"), ("FusedConv2D", "conv"), ("Depthwise", "depthwise"),
    ("ConcatV2", "concat"), ("MatMul", "dense"), ("Add", "add"), ("Relu", "act"),
    ("ReadVariableOp", "ReadVariableOp"), ("Mean", "pool"), ("Pad", "pad"),
    ("If", "cond"), ("GatherNd", "gather/scatter"), ("TensorScatter", "gather/scatter"),
    ("Where", "gather/scatter"), ("Softmax", "exit test"), ("Max", "exit test"),
    ("GreaterEqual", "exit test"), ("LogicalNot", "exit test"), ("Fill", "exit test"),
    ("Assert", "checks"), ("Identity", "identity"), ("FusedBatchNorm", "batchnorm"),
    ("Rsqrt", "batchnorm"), ("Mul", "mul"), ("Sub", "sub"), ("Sum", "other"),
]


def tf_category(op_type):
    for key, cat in TF_CATEGORIES:
        if key in op_type:
            return cat
    return op_type


def parse_xplane(logdir, calls):
    """Op time by (category, stage), executor overhead, by exclusive time on the compute
    lines; divided by the number of calls."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from s2dnas_tf import conventions

    f = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    xs = xplane_pb2.XSpace()
    with open(f, "rb") as fh:
        xs.ParseFromString(fh.read())
    plane = next(p for p in xs.planes if p.name == "/host:CPU")
    md = plane.event_metadata
    per = collections.Counter()
    counts = collections.Counter()
    wall = 0.0
    for line in plane.lines:
        evs = []
        for e in line.events:
            name = md[e.metadata_id].name
            if name == "signature_wrapper" or name.startswith("EagerLocalExecute"):
                if name == "signature_wrapper":
                    wall += e.duration_ps
                continue
            if e.duration_ps == 0:
                continue
            if ":" in name and "::" not in name:
                op_name, op_type = name.rsplit(":", 1)
                stages = conventions.stages_in_tensor_name(op_name)
                key = (tf_category(op_type), max(stages) if stages else 0)
            elif name == "ExecutorState::Process":
                key = ("executor", 0)
            else:
                continue
            evs.append((e.offset_ps, e.offset_ps + e.duration_ps, key))
        evs.sort(key=lambda v: (v[0], -v[1]))
        stack = []  # [end, key, child time]
        for start, end, key in evs:
            while stack and stack[-1][0] <= start:
                e_end, e_key, e_dur, e_child = stack.pop()
                per[e_key] += e_dur - e_child
                if stack:
                    stack[-1][3] += e_dur
            stack.append([end, key, end - start, 0])
            counts[key] += 1
        while stack:
            e_end, e_key, e_dur, e_child = stack.pop()
            per[e_key] += e_dur - e_child
            if stack:
                stack[-1][3] += e_dur
    to_ms = 1e-9 / calls
    return (
        {f"{c}|{s}": v * to_ms for (c, s), v in per.items()},
        {f"{c}|{s}": n / calls for (c, s), n in counts.items()},
        wall * to_ms,
    )


def cmd_opprof_tf(case, batch=1, calls=200, names=None):
    tf = _tf()
    man = load_manifest(case)
    if names is None:
        names = [
            k for k, v in man["models"].items()
            if v["kind"] in ("dyn", "seq", "sum", "pad", "sumpad", "unfold", "dynsp")
            or k.startswith("thin")
        ]
    shape = tuple(man["image_shape"])
    x = np.random.default_rng(3).uniform(0, 255, (batch,) + shape).astype("float32")
    result = {"case": case, "batch": batch, "calls": calls, "models": {},
              "started": time.strftime("%H:%M:%S"), "loadavg": os.getloadavg()}
    for name in names:
        call = saved_call(tf, man["models"][name], batch)
        for _ in range(20):
            call(x)
        b = time.perf_counter()
        for _ in range(calls):
            call(x)
        plain = (time.perf_counter() - b) / calls * 1000
        logdir = f"{OUT}/{case}/trace/{name}_b{batch}"
        import shutil

        shutil.rmtree(logdir, ignore_errors=True)
        tf.profiler.experimental.start(
            logdir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=3)
        )
        b = time.perf_counter()
        for _ in range(calls):
            call(x)
        traced = (time.perf_counter() - b) / calls * 1000
        tf.profiler.experimental.stop()
        per, counts, wall = parse_xplane(logdir, calls)
        result["models"][name] = {
            "ms": per, "counts": counts, "wall_traced_ms": traced, "wall_ms": plain,
            "signature_ms": wall,
        }
        ops = sum(v for k, v in per.items() if not k.startswith("executor"))
        print(f"{name}: wall {plain:.3f} ms (traced {traced:.3f}), ops {ops:.3f} ms, "
              f"executor {per.get('executor|0', 0):.3f} ms, "
              f"{sum(v for k, v in counts.items() if not k.startswith('executor')):.0f} ops",
              flush=True)
    out = f"{OUT}/{case}/opprof_tf_b{batch}{'' if len(names) > 20 else '_some'}.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


# --------------------------------------------------------------------------- overheads


def cmd_overhead():
    """Per-op fixed cost: chains of N tiny ops (ReLU on 8 floats and a 1x1 conv 8->8 on
    a 4x4x8 map) as SavedModel signatures and TFLite models, N = 1 and 101; the slope is
    the cost of one more op."""
    tf = _tf()
    import keras

    from ai_edge_litert.interpreter import Interpreter

    res = {"started": time.strftime("%H:%M:%S"), "loadavg": os.getloadavg()}
    calls = {}
    for kind in ("relu", "conv"):
        for n in (1, 101):
            inp = keras.Input(batch_shape=(1, 4, 4, 8))
            y = inp
            for i in range(n):
                if kind == "relu":
                    y = keras.layers.ReLU()(y)
                else:
                    y = keras.layers.Conv2D(8, 1, activation="relu")(y)
            m = keras.Model(inp, y)

            class M(tf.Module):
                def __init__(self, model):
                    super().__init__()
                    self.model = model
                    self.f = tf.function(
                        lambda x: {"y": self.model(x)},
                        input_signature=[tf.TensorSpec((1, 4, 4, 8), tf.float32)],
                    )

            mod = M(m)
            path = f"{OUT}/overhead/{kind}{n}"
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            tf.saved_model.save(mod, path, signatures={"serving_default": mod.f})
            loaded = tf.saved_model.load(path)
            fn = loaded.signatures["serving_default"]
            calls[("saved", kind, n)] = (
                lambda x, fn=fn, keep=loaded: fn(x=tf.constant(x))
            )
            it = Interpreter(
                model_content=tf.lite.TFLiteConverter.from_keras_model(m).convert(),
                num_threads=1,
            )
            it.allocate_tensors()
            idx = it.get_input_details()[0]["index"]

            def run(x, it=it, idx=idx):
                it.set_tensor(idx, x)
                it.invoke()

            calls[("tflite", kind, n)] = run
    x = [np.ones((1, 4, 4, 8), np.float32)] * 2000
    from s2dnas_tf import latency

    timed = latency.time_interleaved(
        {"|".join(map(str, k)): v for k, v in calls.items()}, x, warmup=50, chunk=250
    )
    for rt in ("saved", "tflite"):
        for kind in ("relu", "conv"):
            t1 = timed[f"{rt}|{kind}|1"][0]["median_ms"]
            t101 = timed[f"{rt}|{kind}|101"][0]["median_ms"]
            res[f"{rt}_{kind}"] = {"call_ms": t1, "per_op_us": (t101 - t1) / 100 * 1000}
            print(f"{rt} {kind}: one call {t1:.4f} ms, per extra op {(t101 - t1) * 10:.2f} us")
    # One 3x3 conv (bias + ReLU fused) on a 16x16 map, TFLite/XNNPACK, one thread: time
    # against output channels (input 32) and against input channels (output 32).
    sweep = {}
    interps, keys = [], []
    for cin, cout in [(32, c) for c in (2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)] + [
        (c, 32) for c in (2, 4, 6, 8, 10, 12, 16, 20, 24, 48, 64)
    ]:
        inp = keras.Input(batch_shape=(1, 16, 16, cin))
        m = keras.Model(inp, keras.layers.Conv2D(cout, 3, padding="same",
                                                 activation="relu")(inp))
        it = Interpreter(
            model_content=tf.lite.TFLiteConverter.from_keras_model(m).convert(),
            num_threads=1,
        )
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"],
                      np.ones((1, 16, 16, cin), np.float32))
        interps.append(it)
        keys.append((cin, cout))
    times = _time_invokes(interps, rounds=9, target_s=0.01)
    for (cin, cout), t in zip(keys, times):
        macs = 16 * 16 * 9 * cin * cout
        sweep[f"{cin}x{cout}"] = {"us": t * 1e6, "macs": macs, "gmacs_per_s": macs / t / 1e9}
        print(f"conv 3x3 16x16 cin {cin:3d} cout {cout:3d}: {t * 1e6:7.2f} us, "
              f"{macs / t / 1e9:6.2f} GMAC/s")
    res["conv_sweep_tflite"] = sweep
    with open(f"{OUT}/overhead.json", "w") as f:
        json.dump(res, f, indent=1)


# --------------------------------------------------------------------------- report


VARIANT_ROWS = [
    ("dyn", "library export: DynamicModule (tf.cond / TFLite IF)"),
    ("dynnl", "DynamicModule, tf.cond not lowered to Switch/Merge"),
    ("seq", "stage models in sequence, no control flow"),
    ("sum", "seq, concat + conv -> sum of partial convs"),
    ("pad", "seq, channel slices zero-padded to multiples of 8"),
    ("sumpad", "sum + pad"),
    ("dynsp", "DynamicModule on sum + pad"),
    ("split", "TFLite: one model per stage, chained from Python"),
    ("unfold", "seq without BatchNorm folding"),
    ("dynfz", "dyn, variables frozen into constants"),
    ("dynnlfz", "dynnl, frozen"),
    ("seqfz", "seq, frozen"),
    ("sumfz", "sum, frozen"),
    ("padfz", "pad, frozen"),
]


def load_runs(case):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{OUT}/{case}/time_*.json"))]
    order = {"tflite": 0, "saved": 1}
    runs.sort(key=lambda r: (order[r["runtime"]], r["batch"], r["tag"]))
    return runs


def ratio(man, run, name, key="median_ms"):
    """(ratio to the thin net of equal FLOPs, ms) of `name` in `run`, or None."""
    if name not in run["models"]:
        return None
    ref = thin_reference(thin_points(man, run["models"], name, key), man["models"][name]["flops"])
    ms = run["models"][name][key]
    return ms / ref, ms


def report():
    lines = []
    w = lines.append
    md_path = os.path.join(HERE, "profile_exit_paths.md")
    w(REPORT_HEAD)
    for case in ("resnet20", "mobilenetv2"):
        if not os.path.exists(f"{OUT}/{case}/manifest.json"):
            continue
        man = load_manifest(case)
        w(f"\n## {case}\n")
        if case == "mobilenetv2":
            w(f"keras.applications.MobileNetV2(alpha=1.0, classes=1000, weights=None) at "
              f"{man['image_shape'][0]}x{man['image_shape'][1]} (random weights).\n")
        else:
            w("The shipped checkpoint experiments/checkpoints/cifar10_resnet20.keras.\n")
        for arch_name, a in man["archs"].items():
            w(f"Arch `{arch_name}` tokens {a['tokens']}; FLOPs of exit paths 1/2/3 "
              f"(x static): {' / '.join(f'{f:.3f}' for f in a['flops'])}\n")
            w("```\n" + a["table"] + "\n```\n")
        checks = man["checks"]
        w(f"Numerical checks (every realisation and exit path, Keras / SavedModel / TFLite "
          f"against the transformed net's logits, and each frozen SavedModel against its "
          f"source): {len(checks)} passed, worst max |diff| "
          f"{max(c[0] for c in checks):.2e}, worst |diff| / tolerance "
          f"{max(c[0] / c[1] for c in checks):.3f} (tolerance 1e-4 x max(1, |logits|)).\n")
        runs = load_runs(case)
        cols = [f"{r['runtime']} b{r['batch']} {r['tag']}" for r in runs]
        w("\n### Exit path / thin net of equal FLOPs (median time per call, timed in turns)\n")
        w("Cell: ratio (ms). The thin-net time is interpolated at the path's FLOPs over the "
          "thin nets timed in the same run (frozen variants against the frozen thin nets). "
          "A and B are separate runs.\n")
        for arch_name in man["archs"]:
            w(f"\n**{arch_name}**\n")
            w("| variant | path | FLOPs | " + " | ".join(cols) + " |")
            w("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
            for v, _ in VARIANT_ROWS:
                for s in (1, 2, 3):
                    name = f"{arch_name}_{v}_{s}"
                    if name not in man["models"]:
                        continue
                    cells = []
                    for r in runs:
                        q = ratio(man, r, name)
                        cells.append("–" if q is None else f"{q[0]:.2f} ({q[1]:.3g})")
                    if all(c == "–" for c in cells):
                        continue
                    w(f"| {v} | {s} | {man['models'][name]['flops']:.3f} | "
                      + " | ".join(cells) + " |")
        w("\nVariants: " + "; ".join(f"`{v}` {d}" for v, d in VARIANT_ROWS) + ".\n")
        thin = [k for k in man["models"] if k.startswith(("thin_", "fzthin_"))]
        w("\nThin nets (median ms):\n")
        w("| thin | FLOPs | " + " | ".join(cols) + " |")
        w("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
        for k in thin:
            w(f"| {k} | {man['models'][k]['flops']:.3f} | " + " | ".join(
                f"{r['models'][k]['median_ms']:.3g}" if k in r["models"] else "–"
                for r in runs) + " |")
        w("\nRuns: " + "; ".join(
            f"{r['runtime']} b{r['batch']} {r['tag']}: {r['n']} calls per model, "
            f"started {r['started']} UTC, load {r['loadavg_before'][0]:.1f} -> "
            f"{r['loadavg_after'][0]:.1f}, {r['seconds']:.0f} s" for r in runs) + ".\n")
        report_decomposition(w, case, man, runs)
        report_tflite_ops(w, case, man, runs)
        report_tf_ops(w, case, man)
    if os.path.exists(f"{OUT}/overhead.json"):
        o = json.load(open(f"{OUT}/overhead.json"))
        w("\n## Fixed costs (chains of 1 vs 101 tiny ops; 4x4x8 maps; timed in turns)\n")
        w("| runtime | op | one call ms | per extra op us |")
        w("| --- | --- | --- | --- |")
        for k, v in o.items():
            if isinstance(v, dict) and "call_ms" in v:
                rt, op = k.split("_")
                w(f"| {rt} | {op} | {v['call_ms']:.4f} | {v['per_op_us']:.2f} |")
        sweep = o.get("conv_sweep_tflite")
        if sweep:
            w("\nOne 3x3 conv (+bias+ReLU) on a 16x16 map, TFLite/XNNPACK, one thread:\n")
            w("| cin x cout | us | GMAC/s |")
            w("| --- | --- | --- |")
            for k, v in sweep.items():
                w(f"| {k} | {v['us']:.2f} | {v['gmacs_per_s']:.1f} |")
    w(REPORT_TAIL)
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {md_path}")


def op_macs(o):
    ins, out = o.get("in_shapes"), o.get("out_shape")
    if not ins or not out:
        return 0
    if o["op"] == "CONV_2D":
        f = ins[1]  # [cout, kh, kw, cin]
        return out[1] * out[2] * f[0] * f[1] * f[2] * f[3]
    if o["op"] == "DEPTHWISE_CONV_2D":
        f = ins[1]  # [1, kh, kw, c]
        return out[1] * out[2] * f[1] * f[2] * f[3]
    if o["op"] == "FULLY_CONNECTED":
        return ins[1][0] * ins[1][1]
    return 0


def op_tile_macs(o, tile=16):
    """MACs with the output channels rounded up to `tile` (XNNPACK's f32 conv on this
    AVX-512 CPU computes output channels in blocks of 16: see the conv sweep)."""
    m = op_macs(o)
    if o["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D") and m:
        c = o["out_shape"][-1]
        return m * (-(-c // tile) * tile) / c
    return m


def path_ops(man, name, ops):
    """The ops an exit path runs: the subgraphs whose stages are <= the path's."""
    path = man["models"][name].get("path") or 1
    sg_stage = collections.defaultdict(set)
    for o in ops:
        sg_stage[o["subgraph"]].add(o["stage"])
    run = {sg for sg, st in sg_stage.items() if max(st) <= path}
    # An IF's else branch (only stage-0 ops) runs only when the image exits before it;
    # count stage-0-only subgraphs but the main one only on the stage-1 path.
    run = {sg for sg in run if sg == 0 or max(sg_stage[sg]) > 0 or path == 1}
    return [o for o in ops if o["subgraph"] in run]


TFL_CATS = ["conv", "depthwise", "dense", "concat", "add", "pad", "pool", "other"]


def report_tflite_ops(w, case, man, runs):
    path = f"{OUT}/{case}/opprof_tflite.json"
    if not os.path.exists(path):
        return
    prof = json.load(open(path))
    tim = next((r["models"] for r in runs if r["runtime"] == "tflite" and r["tag"] == "A"), {})
    w("\n### TFLite: where an exit path's time goes (each op timed alone)\n")
    w("Every op of the converted model cut out into a one-op model and timed alone "
      "(XNNPACK, one thread, the fixed cost of an invoke subtracted); summed over the ops "
      "the exit path runs, in microseconds (op count in brackets). `whole` is the model's "
      "median in run A (called through the signature runner); `rest` = whole - sum of ops: "
      "the IF op (copying the branch's inputs in and outputs out), the runner's call, and "
      "the interplay of ops. `conv MAC/ns`: conv + depthwise MACs per nanosecond of their "
      "summed time.\n")
    w("| model | FLOPs | " + " | ".join(TFL_CATS)
      + " | sum | whole | rest | conv MAC/ns | conv MMACs | tile-16 MMACs |")
    w("| --- | --- | " + " | ".join("---" for _ in TFL_CATS)
      + " | --- | --- | --- | --- | --- | --- |")
    for name, m in prof["models"].items():
        ops = path_ops(man, name, m["ops"])
        agg, cnt = collections.Counter(), collections.Counter()
        macs = tile = 0
        for o in ops:
            if o["ms"] is None:
                continue
            c = op_category(o["op"])
            c = c if c in TFL_CATS else "other"
            agg[c] += o["ms"] * 1000
            cnt[c] += 1
            if c in ("conv", "depthwise"):
                macs += op_macs(o)
                tile += op_tile_macs(o)
        total = sum(agg.values())
        whole = tim.get(name, {}).get("median_ms")
        conv_us = agg["conv"] + agg["depthwise"]
        w(f"| {name} | {man['models'][name]['flops']:.3f} | " + " | ".join(
            f"{agg[c]:.0f} ({cnt[c]})" if cnt[c] else "–" for c in TFL_CATS)
          + f" | {total:.0f} | " + (f"{whole * 1000:.0f} | {whole * 1000 - total:.0f}"
                                     if whole else "– | –")
          + f" | {macs / conv_us / 1000 if conv_us else 0:.2f} | {macs / 1e6:.2f} | "
          f"{tile / 1e6:.2f} |")
    # Conv efficiency by output channels, over all profiled models.
    buckets = [(1, 4), (5, 8), (9, 12), (13, 16), (17, 24), (25, 32), (33, 64), (65, 10**6)]
    eff = collections.defaultdict(lambda: [0, 0.0, 0])
    for name, m in prof["models"].items():
        for o in m["ops"]:
            if o["op"] == "CONV_2D" and o["ms"]:
                cout = o["out_shape"][-1]
                b = next(bk for bk in buckets if bk[0] <= cout <= bk[1])
                e = eff[b]
                e[0] += op_macs(o)
                e[1] += o["ms"] * 1e6
                e[2] += 1
    if eff:
        w("\nTFLite CONV_2D efficiency by output channels (every conv of every profiled "
          "model, each counted once per model; MAC per ns of op time):\n")
        w("| cout | convs | MAC/ns |")
        w("| --- | --- | --- |")
        for b in buckets:
            if b in eff:
                e = eff[b]
                w(f"| {b[0]}-{b[1] if b[1] < 10**6 else ''} | {e[2]} | {e[0] / e[1]:.2f} |")


def tflite_op_sums(man, prof, name):
    """{category: us} of the ops exit path `name` runs, from the per-op profile."""
    agg = collections.Counter()
    for o in path_ops(man, name, prof["models"][name]["ops"]):
        if o["ms"] is None:
            continue
        c = op_category(o["op"])
        agg[c if c in TFL_CATS else "other"] += o["ms"] * 1000
    return agg


def report_decomposition(w, case, man, runs):
    """Where the excess over the thin net goes, per exit path >= 2 of each arch."""
    path = f"{OUT}/{case}/opprof_tflite.json"
    prof = json.load(open(path)) if os.path.exists(path) else None
    tfl = [r for r in runs if r["runtime"] == "tflite"]
    if prof and tfl:
        thin = [k for k in prof["models"] if k.startswith("thin_")]
        thin_conv = [(man["models"][k]["flops"], tflite_op_sums(man, prof, k)["conv"]
                      + tflite_op_sums(man, prof, k)["depthwise"]) for k in thin]
        thin_all = [(man["models"][k]["flops"], sum(tflite_op_sums(man, prof, k).values()))
                    for k in thin]
        w("\n### TFLite: the excess of an exit path over the thin net, split by cause\n")
        w("Per run (A / B): `excess` = dyn path - thin net of equal FLOPs (ms, as a "
          "fraction of the thin net's time); `IF` = dyn - seq (the control flow: the IF "
          "op's copies and the branch call); the rest of the excess split by the per-op "
          "profile (run separately, its times scaled to the run): `concat` = the "
          "CONCATENATION ops, `convs` = conv + depthwise time beyond what the thin net's "
          "convs take at the same FLOPs (more, narrower convolutions), `other` = the "
          "remainder (adds, heads, the extra ops' fixed costs, the interplay).\n")
        w("| path | run | dyn ms | thin ms | excess | IF | concat | convs | other |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for arch_name in man["archs"]:
            for s in (2, 3):
                dyn, seq = f"{arch_name}_dyn_{s}", f"{arch_name}_seq_{s}"
                if dyn not in prof["models"]:
                    continue
                f = man["models"][dyn]["flops"]
                sums = tflite_op_sums(man, prof, dyn)
                conv_x = sums["conv"] + sums["depthwise"] - thin_reference(thin_conv, f)
                for r in tfl:
                    if dyn not in r["models"] or seq not in r["models"]:
                        continue
                    t_dyn = r["models"][dyn]["median_ms"] * 1000
                    t_seq = r["models"][seq]["median_ms"] * 1000
                    ref = thin_reference(thin_points(man, r["models"], dyn), f) * 1000
                    # the profile's scale relative to this run: thin nets' op sums vs times
                    scale = ref / thin_reference(thin_all, f)
                    exc = t_dyn - ref
                    if_ = t_dyn - t_seq
                    conc = sums["concat"] * scale
                    convs = conv_x * scale
                    other = exc - if_ - conc - convs

                    def cell(v):
                        return f"{v / 1000:.3f} ({v / ref:+.2f})"

                    w(f"| {arch_name} {s} | {r['tag']} | {t_dyn / 1000:.3f} | "
                      f"{ref / 1000:.3f} | {cell(exc)} | {cell(if_)} | {cell(conc)} | "
                      f"{cell(convs)} | {cell(other)} |")
    sm = [r for r in runs if r["runtime"] == "saved"]
    rows = []
    for r in sm:
        for arch_name in man["archs"]:
            for s in (1, 2, 3):
                n = {k: f"{arch_name}_{k}_{s}" for k in ("dyn", "dynfz", "seqfz", "seq")}
                if not all(v in r["models"] for v in n.values()):
                    continue
                f = man["models"][n["dyn"]]["flops"]
                t = {k: r["models"][v]["median_ms"] for k, v in n.items()}
                thin = thin_reference(thin_points(man, r["models"], n["dyn"]), f)
                fzthin = thin_reference(thin_points(man, r["models"], n["dynfz"]), f)
                rows.append((arch_name, s, r, t, thin, fzthin))
    if rows:
        w("\n### SavedModel: the excess of an exit path over the thin net, split by cause\n")
        w("Per run: `excess` = dyn - thin net of equal FLOPs (ms, and as a fraction of the "
          "thin net); `variables` = (dyn - dynfz) - (thin - frozen thin): the extra cost of "
          "passing the captured variables on each call (the dynamic module captures every "
          "stage's weights); `control` = dynfz - seqfz (tf.cond, exit test, threshold "
          "check, and at batch > 1 gather/scatter); `ops` = seqfz - frozen thin: the stages' "
          "op lists themselves (more, narrower ops, concatenations).\n")
        w("| path | run | dyn ms | thin ms | excess | variables | control | ops |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for arch_name, s, r, t, thin, fzthin in rows:
            exc = t["dyn"] - thin
            var = (t["dyn"] - t["dynfz"]) - (thin - fzthin)
            ctl = t["dynfz"] - t["seqfz"]
            ops = t["seqfz"] - fzthin

            def cell(v):
                return f"{v:.3f} ({v / thin:+.2f})"

            w(f"| {arch_name} {s} | b{r['batch']} {r['tag']} | {t['dyn']:.3f} | "
              f"{thin:.3f} | {cell(exc)} | {cell(var)} | {cell(ctl)} | {cell(ops)} |")


TF_CATS = ["conv", "depthwise", "dense", "concat", "add", "act", "pad", "pool",
           "ReadVariableOp", "batchnorm", "cond", "gather/scatter", "exit test", "other"]


def report_tf_ops(w, case, man):
    for path in sorted(glob.glob(f"{OUT}/{case}/opprof_tf_b*.json")):
        prof = json.load(open(path))
        w(f"\n### SavedModel batch {prof['batch']}: tf.profiler trace "
          f"({prof['calls']} calls per model, started {prof['started']} UTC)\n")
        w("Exclusive time per call in microseconds by op category (op events per call in "
          "brackets; host_tracer_level 3). `executor`: the executor's own time around the "
          "ops; `call`: the rest of the untraced wall time (the Python signature call, "
          "passing the captured variables, eager dispatch). Tracing slows the calls; the "
          "columns are scaled by untraced / traced wall time so that a row sums to the "
          "untraced wall time.\n")
        w("| model | FLOPs | wall ms | call | executor | " + " | ".join(TF_CATS) + " |")
        w("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in TF_CATS) + " |")
        for name, m in prof["models"].items():
            agg, cnt = collections.Counter(), collections.Counter()
            for k, v in m["ms"].items():
                c = k.split("|")[0]
                c = c if c in TF_CATS or c == "executor" else "other"
                agg[c] += v * 1000
                cnt[c] += m["counts"][k]
            scale = m["wall_ms"] / m["wall_traced_ms"]
            inside = sum(agg.values())
            call = m["wall_traced_ms"] * 1000 - inside
            w(f"| {name} | {man['models'][name]['flops']:.3f} | {m['wall_ms']:.3f} | "
              f"{call * scale:.0f} | {agg['executor'] * scale:.0f} | " + " | ".join(
                  f"{agg[c] * scale:.0f} ({cnt[c]:.0f})" if cnt[c] else "–" for c in TF_CATS)
              + " |")


REPORT_HEAD = """# Where the exit paths through stages 2 and 3 lose time (issue 17)

Written by `python experiments/results/side/profile_exit_paths.py report` from the runs
listed under each case (the script's docstring says what each realisation is and how each
table is measured). Every model is timed one call at a time on one thread, all models of a
run in turns (rounds of about a second), median per call; ratios are to a thin network of
equal FLOPs (width multiplier / alpha) interpolated over the thin networks of the same run.
The machine (2 cores) was shared with other engineers' test runs: load averages are given
per run; compare ratios, not absolute times across runs. The reading is at the end.
"""


REPORT_TAIL = """
## Reading (hand-written, 2026-11-29)

Machine: the shared 2-core AVX-512 VM, TensorFlow 2.21 (oneDNN on), ai-edge-litert 2.3
(XNNPACK), one thread. ResNet-20: the shipped checkpoint; MobileNetV2 at 160x160 (at 224
every MobileNetV2 run would have taken about twice as long, and the builds alone took 24
minutes at 160), random weights. `litert-benchmark` in the venv is ai-edge-litert's Python
benchmark (`--model`, no op profiling) and the Python interpreter has no op profiler, so the
TFLite per-op times come from one-op models cut out of each converted flatbuffer (sum of
ops within 2-8 % of the whole model's time for ResNet-20; for MobileNetV2 the isolated ops
sum to 65-75 % of the whole, since alone they run with warm caches).

### What an exit path through stage 2 or 3 loses, and where

**TFLite, batch 1** (ResNet-20, path 2 of the library's export, two runs): 1.70-1.74x a thin
net of equal FLOPs (default arch), 1.52-1.54x (rl arch); path 3 1.93-1.98x / 1.73-1.74x;
MobileNetV2 path 2 1.82-1.84x, path 3 1.70-1.77x. Split by cause (table "TFLite: the excess ..."),
in fractions of the thin net's time, default / rl path 2:

- **narrow convolutions: +0.50 / +0.37** (the largest share). XNNPACK on this CPU computes a
  convolution's output channels in tiles of 16: a 3x3 conv on 16x16x32 costs 26.5 us for
  *any* output count from 2 to 16, 52 us for 20-32, 108 us for 48-64; input channels are
  paid linearly (conv sweep at the end). Stage 2's convolutions have 4-24 channels of their
  own (8/16/32-channel groups cut in eighths), so most of them pay a full tile for a
  quarter to a half of it, and a path runs 42 convolutions where the thin net runs 21. The
  convs of a stage-2 path run at 22-26 MAC/ns against 35-49 for the thin nets; rounding
  every conv's output channels up to 16 ("tile-16 MMACs" in the per-op table) gives
  26.1 M tile-MACs for the default path 2 (12.3 M real MACs), against about 15 M for the
  thin net of equal FLOPs: that ratio (1.7x) is the conv-time ratio.
- **IF: +0.14-0.17 / +0.08-0.10** (dyn - seq). TFLite's IF copies every input of the taken
  branch (all boundary feature maps of the earlier stages: 20 tensors for ResNet-20's
  stage 2) into the branch subgraph and its outputs back. MobileNetV2: +0.32-0.38 (0.6-0.8 ms
  of 3.4-4.0), because its boundary tensors include 80x80 maps.
- **CONCATENATION: +0.14 / +0.07** (19 concatenations per stage).
- other ops and per-op fixed cost: about 0. XNNPACK's cost per extra op is below 0.1 us
  (101 chained tiny convs), so the op count as such costs nothing in TFLite; what costs is
  each conv's partly empty output tile.

**SavedModel, batch 1**: path 2 2.41-2.50x (default), 2.13-2.14x (rl), path 3 2.63-2.81 /
2.35-2.38; even path 1 (stage 1 alone, as cheap as a thin net when called on its own: `seq`
0.93-1.08) costs 1.58-1.66x through the DynamicModule. Split (table "SavedModel: the excess
...", path 2, runs A and B): **captured variables +0.07-0.46** (a loaded signature passes
every captured variable on every call; the DynamicModule captures all three stages' 135
variables, a thin net 46; freezing them into constants saves about 0.4 ms per call for a
thin net and 0.7-1.2 ms for the dynamic module), **control flow +0.35-0.45** (path 1:
+0.22-0.31: the tf.cond is lowered to Switch/Merge and the executor visits every node of the
branch not taken as "dead", so an image leaving at stage 1 pays for stage 2's and 3's
nodes), **ops +0.61-0.79** (path 3: +0.81-1.29): TensorFlow's CPU runtime costs about 23 us per
convolution whatever its size (101 chained tiny convs: +23.4 us each), and a stage-2 path
runs 42 convolutions and 19 concatenations where a thin net runs 21 convolutions.

**SavedModel, batch 16 / 64**: path 2 1.77-1.93x / 1.71-1.88x, path 3 1.78-2.24x; the
per-call costs fade (variables about 0) but the control flow (cond + gather/scatter) still
costs +0.18-0.28 at batch 16 and +0.06-0.22 at 64, and the stage ops themselves +0.57-0.73
(path 2): oneDNN's convolutions, like XNNPACK's, pay narrow channel slices well above
their FLOPs.

### Remedies, measured (ratio to the thin net of equal FLOPs; ResNet-20 path 2, default / rl arch, runs A-B)

| remedy | TFLite b1 | SavedModel b1 | SavedModel b16 | SavedModel b64 |
| --- | --- | --- | --- | --- |
| none (library export, `dyn`) | 1.70-1.74 / 1.52-1.54 | 2.41-2.50 / 2.13-2.14 | 1.88-1.93 / 1.77-1.79 | 1.86-1.88 / 1.71 |
| no control flow at all (`seq`, a bound) | 1.57 / 1.44 | 1.97-2.07 / 1.87-1.92 | 1.67-1.70 / 1.61-1.63 | 1.70-1.74 / 1.61-1.65 |
| partial-conv sums instead of concat (`sum`) | 1.50-1.51 / 1.41-1.42 | 2.30-2.37 / 2.17-2.29 (worse) | 1.73 / 1.65-1.68 | 1.64-1.70 / 1.56-1.67 |
| zero-pad slices to multiples of 8 (`pad`) | 2.02 / 1.89 (worse) | 2.21-2.24 / 2.06-2.11 (worse) | 2.00-2.04 / 2.02-2.07 | 2.06-2.22 / 2.16-2.18 |
| sum + pad in the DynamicModule (`dynsp`) | 2.22-2.28 / 2.04-2.08 | 2.93-3.08 / 2.77-2.83 | – | – |
| separate per-stage TFLite models (`split`) | 1.81-1.84 / 1.60 | – | – | – |
| tf.cond not lowered (`dynnl`) | – | 2.60-2.78 / 2.31-2.32 (path 1: -0.01 to -0.13) | 3.42-4.56 (much worse) | – |
| variables frozen (`dynfz`, vs frozen thin) | – | 2.43-2.47 / 2.14-2.30 | 1.98-2.01 / 1.79-1.81 | 1.83-1.93 / 1.79-1.81 |
| no BN folding (`unfold`, the old export) | – | 2.83-3.08 / 2.76-2.77 | 2.15-2.19 / 2.09-2.10 | 2.22 / 2.11-2.16 |
| arch with channel_multiple=8 (`default_m8` / `rl_m8`, dyn) | 1.09-1.11 / 1.32-1.34 | 1.83-1.97 / 2.00-2.19 | 1.37 / – | 1.29 / 1.53 |
| the same, no control flow (m8 `seq`) | 1.01-1.02 / 1.23-1.24 | 1.38-1.58 / 1.80-1.92 | 1.14 / 1.47 | 1.14 / 1.46 |

(`frozen` rows are against thin nets frozen the same way: freezing cuts the absolute time by
0.7-1.2 ms per call at batch 1, but the thin nets gain 0.4 ms, so the ratio barely moves.
The m8 rows at SavedModel b16 come from one run, at b1 from runs B and C.)
MobileNetV2 (TFLite b1, path 2 / 3, runs A-B): dyn 1.82-1.84 / 1.70-1.77, seq 1.46-1.50 /
1.55-1.61, sum 1.35 / 1.48-1.58 (here the sums help a little more: -0.11-0.15 / -0.03-0.07),
pad 1.56-1.59 / 1.67-1.70, split 2.13-2.18 / 2.09-2.16;
SavedModel b1: dyn 1.82-1.97 / 1.95-2.13, seq 1.58-1.62 / 1.81-2.11, frozen dyn 1.69;
SavedModel b16: dyn 1.50 / 1.51-1.54, seq 1.29-1.32 / 1.37, sum 1.30-1.34 / 1.38 (with
its wider slices MobileNetV2 loses less than ResNet-20 at batch 16).

What follows:

- **Partial-conv sums** remove the concatenations but add one conv pass (and an ADD) per
  earlier stage: in TFLite they win back most of the concat share (-0.03 to -0.11), in
  SavedModel they lose (each extra conv costs its ~23 us); not worth a second realisation.
- **Zero-padding** the same slices to multiples of 8 makes every path slower (+0.2-0.45):
  the padded *input* channels are real work, and on this CPU the output tile is 16, so
  padding outputs to 8 saves nothing. (On ARM NEON XNNPACK's f32 tiles are 8 wide; there
  output padding to 8 would be free, input padding would still cost. Not measurable here.)
- **An architecture in whole tiles** is what helps: `default_m8` (the default tokens with
  `channel_multiple=8`) has path 2 at 1.09-1.11x in TFLite (goal met) and 1.14x in
  SavedModel b16/b64 without control flow. Two things changed, and the second matters as
  much as the first: its slices are whole multiples of 8 (16 at 8x8), and its stage 2 has
  *no channels of its own in the 32x32 group*, so stage 2 skips that group's 7
  convolutions and 7 concatenations altogether (35 convs on path 2 instead of 42). `rl_m8`
  (slices of 8, but stage 2 present in every group) only gets to 1.32-1.34x. Its path 3 is
  still 1.5-1.6x.
- **Control flow**: in TFLite the IF's copies cost 0.08-0.17 (ResNet-20) and 0.38
  (MobileNetV2) of a thin net; separate per-stage models chained by the caller cost more
  (the same copies plus a call per stage). In SavedModel the lowered cond costs +0.3 on
  *every* path including path 1; not lowering it is worse on paths 2-3 and far worse at
  batch 16 (each functional If runs its branch as a function call with all its captures).

### What cannot reach the goal, and why

- **SavedModel batch 1 <= 1.3x** is out of reach for paths 2 and 3 with S2DNAS's structure
  (every stage a full-depth copy of the network): TensorFlow's CPU runtime charges about
  23 us per convolution whatever its size, and a path through stage s runs about s times the
  thin net's convolutions (plus the concatenations). Even with no control flow and frozen
  weights (`seqfz`), path 2 costs 1.7-2.0x; the best measured, `default_m8` without control
  flow, 1.38-1.58x. Only fewer ops per path would do: stages that start later (no own channels
  in the early groups, as `default_m8`'s stage 2), or a space with depth per stage.
- **TFLite <= 1.15x** is reached only where the architecture cooperates (`default_m8` path
  2); no realisation of the m = 1 archs gets below 1.4x (best: `sum`, 1.41-1.51), because
  their convolutions waste most of XNNPACK's 16-wide output tiles. Path 3 of every arch
  measured is at 1.4x or more (`rl_m8` seq 1.42).
- **SavedModel batch 16-64 <= 1.15x**: only `default_m8` path 2 without control flow
  (1.14x); with the cond and gather/scatter 1.29-1.37x.

### Recommendation for the realisation (and what it will not fix)

1. Keep the Concatenate realisation (partial-conv sums: +-0.1, worse in SavedModel) and do
   not pad channels with zeros.
2. SavedModel: freeze the weights into constants in the exported signatures (0.7-1.2 ms
   less per call at batch 1 for the dynamic export, 0.4 ms for a static one); avoid the lowered cond at
   batch 1, e.g. a `serving_stage1` signature (stage 1 + exit test, returning the boundary
   tensors) and per-stage continuation signatures, so an image leaving at stage 1 runs no
   dead nodes (bound: `seqfz` vs `dynfz`, -0.2 to -0.45 at batch 1). Keep folding BN.
3. TFLite: keep IF (the per-stage-model alternative is slower); the IF copies are the
   price of in-graph control flow in this runtime.
4. The big lever is not the realisation but the architecture: make the search see latency.
   On XNNPACK, conv time follows tile-rounded MACs (output channels rounded up to the
   kernel's tile: 16 on this AVX-512 machine, 8 on NEON) almost exactly (per-op table:
   "tile-16 MMACs"); on TensorFlow batch 1, the number of convolutions. A reward or
   constraint on `sum over convs of H*W*k*k*C_in*ceil(C_out/tile)*tile` (TFLite) and on the
   op count (SavedModel) would steer the search to slices in whole tiles and to stages
   that skip early groups, which is what `default_m8` happens to be.

### Surprises

- Zero-padding to 8 is a loss everywhere on this machine, although thin nets of non-multiple
  widths looked like they were "paid at the next multiple of 8" (README): the tile is 16 and
  it is on the output side; input channels are paid linearly.
- Stage 1 alone is as cheap as a thin net (`seq_1`: 0.93-1.02x) but through the
  DynamicModule's SavedModel it costs 1.6-1.7x at batch 1: the lowered cond visits all of
  stage 2's and 3's nodes, and the signature passes all stages' variables.
- Freezing the variables saves 0.35 ms per call even for the static thin nets (46
  variables): experiments/results/README.md's "freezing the weights into constants changed
  nothing" does not hold for loaded signatures on this build.
- A stage with no channels of its own in the first group skips those layers entirely: the
  cheapest way to cut a path's op count within today's search space.
- tf.cond left as a functional If (`_lower_using_switch_merge` off) is 2-4.5x slower at batch
  16: every If runs its branch as a function call.
"""


def main(argv):
    cmd = argv[1]
    if cmd == "build":
        cmd_build(argv[2], *([argv[3:]] if len(argv) > 3 else []))
    elif cmd == "time":
        cmd_time(argv[2], argv[3], int(argv[4]) if len(argv) > 4 else 1,
                 argv[5] if len(argv) > 5 else "A",
                 int(argv[6]) if len(argv) > 6 and argv[6] != "-" else None,
                 argv[7].split(",") if len(argv) > 7 else None)
    elif cmd == "opprof_tflite":
        cmd_opprof_tflite(argv[2], argv[3].split(",") if len(argv) > 3 else None)
    elif cmd == "opprof_tf":
        cmd_opprof_tf(argv[2], int(argv[3]) if len(argv) > 3 else 1,
                      int(argv[4]) if len(argv) > 4 else 200,
                      argv[5].split(",") if len(argv) > 5 else None)
    elif cmd == "overhead":
        cmd_overhead()
    elif cmd == "report":
        report()
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
