"""Exports kept in a work directory for the timing scripts (`latency_depth.py`,
`latency_mobilenetv2_224.py`): a rerun reuses them and only times again."""

from __future__ import annotations

import os


def exported(work_dir: str, name: str, build, thresholds=None) -> tuple[str, str]:
    """(SavedModel dir, .tflite path) of `build()` (a static Keras model when `thresholds`
    is None, else a multi-stage net exported with those exit thresholds), exported into
    `work_dir` once."""
    from s2dnas_tf import export

    saved = os.path.join(work_dir, name, "1")
    tflite = os.path.join(work_dir, f"{name}.tflite")
    if not (os.path.exists(saved) and os.path.exists(tflite)):
        model = build()
        if thresholds is None:
            export.export_static(model, work_dir, name, overwrite=True)
        else:
            export.export_saved_model(model, thresholds, work_dir, name, overwrite=True)
        export.convert_to_tflite(saved, tflite)
    return saved, tflite
