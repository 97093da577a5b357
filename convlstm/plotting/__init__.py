"""Figures for training, inference and the upstream-vs-baseline comparison.

Each ``plot_*`` function draws one figure and returns it, as pysteps' ``visualization`` does: a
single-panel plot draws into the caller's ``ax`` when given, a multi-panel one lays its panels out in
the caller's ``fig`` (a Figure or SubFigure), else each makes a figure of its own (never pyplot's global
state). Nothing is written until the caller passes the figure to :func:`save_figure`.
"""

from __future__ import annotations

from convlstm.plotting.figure import save_figure
from convlstm.plotting.maps import plot_case_maps, plot_difference_map, plot_precipitation_maps, plot_prediction_map
from convlstm.plotting.style import Box
from convlstm.plotting.training import plot_loss_curve
from convlstm.plotting.verification import plot_csi_bars, plot_error_by_time, plot_performance_diagram

__all__ = ["Box", "plot_case_maps", "plot_csi_bars", "plot_difference_map", "plot_error_by_time", "plot_loss_curve",
           "plot_performance_diagram", "plot_precipitation_maps", "plot_prediction_map", "save_figure"]
