"""The latency readout in the slice views, drawn by a text actor the module owns in each view's renderer.

Slicer's DataProbe owns the views' corner annotation: it rewrites all four corners whenever a slice logic changes
(scroll, zoom, pan, window/level; `DataProbeLib/SliceViewAnnotations.py`, `drawCornerAnnotations`), so text written
there vanishes at the next scroll, and clearing it would blank DataProbe's own text. An actor of our own is touched
by nobody else. Qt-free: it needs only each view's vtkRenderer.
"""
from __future__ import annotations

from typing import Dict, Tuple

import vtk

POSITION = (0.99, 0.90)  # normalized viewport, anchored at the text's top right: below DataProbe's upper-right lines
FONT_SIZE = 12
COLOUR = (1.0, 0.85, 0.2)


class SliceViewOverlay:
    """One text actor per slice view (by view name), added to that view's renderer on first use."""

    def __init__(self) -> None:
        self._actors: Dict[str, Tuple[object, vtk.vtkTextActor]] = {}

    def show(self, view_name: str, renderer, text: str) -> None:
        """Show `text` in the view (empty text hides the actor)."""
        actor = self._actor(view_name, renderer)
        actor.SetInput(text)
        actor.SetVisibility(bool(text))

    def hide(self) -> None:
        for _, actor in self._actors.values():
            actor.SetVisibility(False)

    def text(self, view_name: str) -> str:
        """What the view shows now ("" when hidden or never shown)."""
        if view_name not in self._actors:
            return ""
        actor = self._actors[view_name][1]
        return actor.GetInput() or "" if actor.GetVisibility() else ""

    def remove(self) -> None:
        """Take every actor out of its renderer (module cleanup / reload)."""
        for renderer, actor in self._actors.values():
            renderer.RemoveViewProp(actor)
        self._actors.clear()

    def _actor(self, view_name: str, renderer) -> vtk.vtkTextActor:
        known = self._actors.get(view_name)
        if known is not None and known[0] is renderer:
            return known[1]
        if known is not None:  # the view got a new renderer (layout change): move over
            known[0].RemoveViewProp(known[1])
        actor = vtk.vtkTextActor()
        actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        actor.SetPosition(*POSITION)
        prop = actor.GetTextProperty()
        prop.SetFontSize(FONT_SIZE)
        prop.SetColor(*COLOUR)
        prop.SetShadow(True)
        prop.SetJustificationToRight()
        prop.SetVerticalJustificationToTop()
        actor.SetPickable(False)
        renderer.AddViewProp(actor)
        self._actors[view_name] = (renderer, actor)
        return actor
