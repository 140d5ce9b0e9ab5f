"""Headroom: from "this kernel took X ms" to where the time above the roofline goes and what to do.

Derived from a timed report's (record, device) when asked, never stored (docs/headroom.md):

* ``ranking.py`` — ``headroom()``: time above the roofline per kernel, module and stage, ranked, with each
  row's share of the step (``Report.headroom()``);
* ``causes.py`` — ``causes()``: one small detector per cause (``launch.py``, ``breaks.py``, ``gemm.py``,
  ``chains.py``, ``attention.py``, ``comm.py``), each returning ``Cause(kind, where, lost_s, evidence,
  action)`` (``Report.causes()``);
* ``predict.py`` — ``predict()``: the step and stage times on another device, per kernel class, from each
  class's achieved fraction of its roofline (``Report.predict(device)``);
* ``cli.py`` — ``show_headroom(report)`` and ``predict_main(argv)`` for the command line.
"""
from graphmfu.headroom.causes import causes
from graphmfu.headroom.evidence import Cause
from graphmfu.headroom.predict import Prediction, predict
from graphmfu.headroom.ranking import Headroom, headroom

__all__ = ["headroom", "Headroom", "causes", "Cause", "predict", "Prediction"]
